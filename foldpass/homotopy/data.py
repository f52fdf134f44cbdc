"""Datasets for homotopy training, as (train, validation) TensorDatasets of 1 x 28 x 28 images.

    digits   scikit-learn's bundled handwritten digits (1,797 real 8 x 8 scans, no download),
             resized to 28 x 28 (bilinear) and scaled to [0, 1]; a fixed, stratified 80 / 20 split.
             The built-in default: works on a machine without network.
    mnist    torchvision's MNIST (60,000 / 10,000): downloaded into --data-dir when the machine has
             network (download=True), else read from --data-dir.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..defaults import DATASET_NAMES
from ..errors import InputError
from ..extras import require

DATASETS = DATASET_NAMES


def digits(seed: int = 0, size: int = 28, channels: int = 1) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits, 8 x 8 -> size x size (repeated over `channels`), split 80 / 20 per class."""
    load_digits = require("sklearn.datasets", "train").load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, channels, -1, -1).contiguous()
    y = torch.tensor(data.target, dtype=torch.long)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(data.target == c)
        val[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    val_t = torch.from_numpy(val)
    return TensorDataset(x[~val_t], y[~val_t]), TensorDataset(x[val_t], y[val_t])


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


def load_dataset(name: str, data_dir: str | None = None, download: bool = False, limit: int | None = None,
                 image_shape: tuple[int, int, int] = (1, 28, 28)):
    """(train, validation) for a dataset name, as images of `image_shape` (C, H, W; digits only: MNIST
    is 1 x 28 x 28); `limit` keeps the first N of each (for quick runs)."""
    if name == "digits":
        train, val = digits(size=image_shape[1], channels=image_shape[0])
    elif name == "mnist":
        if not data_dir:
            raise InputError("data='mnist' needs data_dir (where MNIST is, or where to download it)")
        train, val = mnist(data_dir, download)
        if tuple(image_shape) != (1, 28, 28):
            raise InputError(f"MNIST images are 1 x 28 x 28; the model takes {image_shape}")
    else:
        raise InputError(f"unknown dataset '{name}'; valid datasets: {', '.join(DATASETS)}")
    if limit:
        train, val = (TensorDataset(*(t[:limit] for t in d.tensors)) for d in (train, val))
    return train, val
