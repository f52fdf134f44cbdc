"""The user's data for every command that takes it (train, deskip, decompose), in three splits.

One `--data` option, one loader:

    mnist5k | digits | mnist        the built-ins (foldpass.builtin_data: real MNIST offline, ...)
    folder:PATH                     an ImageFolder tree, one sub-folder per class (PATH/cat/001.png)
    PATH.npz                        arrays x (N,C,H,W | N,H,W | N,H,W,C) and y (N,), read with
                                    allow_pickle=False
    pkg.module:callable             the user's code, returning (train, val) datasets of (x, y)

Three splits, so that the accuracy foldpass reports flatters nothing:

    train       what the weights are fitted on
    selection   every choice (a rank, a step kept or reverted, the schedule's threshold, the log a
                person watches) is made on it: carved from the training data, stratified, fixed seed
    test        the reported result; read once, by the final evaluation, after every choice

The test split is the data's own held-out part where it has one (mnist's official test set,
--val-data, a callable's val), else a fixed stratified part of the pool (mnist5k: the same 1,000
images as foldpass's former validation split). `DataSplits.describe()` says which images each split
holds (counts, the seed, where the test split came from).

Bad data is one InputError line, before any work: a corrupt image, a label out of range, x / y of
different lengths, a pickled .npz, an empty class folder, images of mixed sizes without image_size.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from .defaults import DATASET_NAMES, DEFAULT_SPLIT_SEED
from .errors import InputError, first_line
from .extras import require

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IN_MEMORY_BYTES = 1 << 30  # a folder decoded to at most this many bytes is kept in memory as one tensor


@dataclass
class DataSplits:
    """train / selection / test datasets of (image C x H x W float32, label int64) and what they hold."""

    train: Dataset
    selection: Dataset
    test: Dataset
    shape: tuple[int, int, int]
    num_classes: int
    source: str
    seed: int = DEFAULT_SPLIT_SEED
    test_from: str = ""  # where the test split came from, in words
    # which items of which pool each split holds: split -> (pool name, indices); disjoint within a pool
    indices: dict = field(default_factory=dict, repr=False)
    in_memory: bool = True  # False: images decoded per item (use DataLoader workers)

    def describe(self) -> dict:
        return {"source": self.source, "shape": list(self.shape), "classes": self.num_classes, "seed": self.seed,
                "train": len(self.train), "selection": len(self.selection), "test": len(self.test),
                "test_from": self.test_from}

    def summary(self) -> str:
        d = self.describe()
        return (f"data: {d['source']}, {' x '.join(map(str, self.shape))}, {d['classes']} classes: "
                f"{d['train']:,} train / {d['selection']:,} selection / {d['test']:,} test "
                f"(selection stratified, seed {d['seed']}; test: {d['test_from']})")

    def check_outputs(self, num_outputs: int) -> None:
        """InputError unless every label indexes one of the model's `num_outputs` classes."""
        if self.num_classes > num_outputs:
            raise InputError(f"data {self.source}: label {self.num_classes - 1} is out of range for a model with "
                             f"{num_outputs} outputs (the labels must be 0 .. {num_outputs - 1})")

    def limited(self, limit: int | None) -> DataSplits:
        """The first `limit` items of each split (quick runs)."""
        if not limit:
            return self
        cut = {name: TensorDataset(*(t[:limit] for t in d.tensors)) if isinstance(d, TensorDataset)
               else Subset(d, range(min(limit, len(d))))
               for name, d in (("train", self.train), ("selection", self.selection), ("test", self.test))}
        return dataclasses.replace(self, **cut)


# ----------------------------------------------------------------------------- the splits

def stratified_pick(labels: np.ndarray, count, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask with count(n) items of each class (n of them) chosen by `rng`."""
    picked = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked[rng.choice(idx, size=min(count(len(idx)), len(idx)), replace=False)] = True
    return picked


def fraction(share: float):
    """count(n) for a share of each class: at least one item of a class that has three."""
    return lambda n: max(int(n * share), 1 if n >= 3 else 0)


def _ordered(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.flatnonzero(mask))


def split_pool(labels: np.ndarray, test_count, selection_count, seed: int) -> dict[str, np.ndarray]:
    """train / selection / test indices into one pool: the test part first (with its own rng, so
    that it stays the same whatever the selection share), the selection part from the rest."""
    rng = np.random.default_rng(seed)
    test = stratified_pick(labels, test_count, rng)
    rest = np.flatnonzero(~test)
    sel_rng = np.random.default_rng([seed, 1])
    selection = np.zeros(len(labels), dtype=bool)
    selection[rest[stratified_pick(labels[rest], selection_count, sel_rng)]] = True
    train = ~test & ~selection
    order = np.random.default_rng([seed, 2])
    return {"train": _ordered(train, order), "selection": _ordered(selection, order), "test": _ordered(test, order)}


def split_train(labels: np.ndarray, selection_count, seed: int) -> dict[str, np.ndarray]:
    """train / selection indices into a training pool whose test split is held out elsewhere."""
    rng = np.random.default_rng([seed, 1])
    selection = stratified_pick(labels, selection_count, rng)
    order = np.random.default_rng([seed, 2])
    return {"train": _ordered(~selection, order), "selection": _ordered(selection, order)}


SELECTION_SHARE = 0.1  # of the training data, when the test split is held out elsewhere
TEST_SHARE = 0.2  # of the pool, when the data has no test part of its own


# ----------------------------------------------------------------------------- tensors

def _labels(y, where: str) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"{where}: y must be one label per item (shape (N,)); got shape {tuple(y.shape)}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InputError(f"{where}: labels must be integers (class indices); got {y.dtype}")
    if len(y) and y.min() < 0:
        raise InputError(f"{where}: label {int(y.min())} is out of range (labels are class indices 0, 1, ...)")
    return torch.from_numpy(y.astype(np.int64))


def images_nchw(x: np.ndarray, where: str) -> torch.Tensor:
    """N x C x H x W float32 from N x H x W, N x C x H x W or N x H x W x C (C of 1 or 3 last);
    integers are scaled from 0 .. 255 to [0, 1]."""
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError(f"{where}: x holds {x.dtype}; images must be numbers")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise InputError(f"{where}: x must be N x C x H x W, N x H x W or N x H x W x C; got shape {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    if np.issubdtype(x.dtype, np.integer):
        t = t / 255.0
    if not torch.isfinite(t).all():
        raise InputError(f"{where}: x holds NaN or infinite values")
    return t


def fit_images(x: torch.Tensor, channels: int | None, size: tuple[int, int] | None) -> torch.Tensor:
    """Images repeated from 1 to `channels` (grey to colour) and resized (bilinear) to `size`."""
    if channels and x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1 and x.shape[1] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise InputError(f"the images have {x.shape[1]} channels; the model takes {channels}")
    if size and tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    if mean is None and std is None:
        return x
    c = x.shape[1]
    m = torch.tensor(_per_channel(mean, c, 0.0, "mean")).view(1, c, 1, 1)
    s = torch.tensor(_per_channel(std, c, 1.0, "std")).view(1, c, 1, 1)
    return (x - m) / s


def _per_channel(values, channels: int, default: float, name: str) -> list[float]:
    if values is None:
        return [default] * channels
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise InputError(f"{name}: {len(values)} values for {channels} channels")
    if name == "std" and any(v <= 0 for v in values):
        raise InputError(f"std values must be positive; got {values}")
    return values


# ----------------------------------------------------------------------------- the forms

def _npz(path: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not os.path.isfile(path):
        raise InputError(f"{where}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise InputError(f"{where}: no array named {' or '.join(missing)} (it holds: "
                                 f"{', '.join(archive.files) or 'nothing'}); save with numpy.savez(path, x=..., y=...)")
            x, y = archive["x"], archive["y"]
    except InputError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputError(f"{where}: holds pickled (object) arrays; foldpass reads .npz files with "
                             "allow_pickle=False: save plain numeric arrays") from None
        raise InputError(f"{where}: not a readable .npz ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile / OSError / EOFError: a damaged file
        raise InputError(f"{where}: not a readable .npz ({type(exc).__name__}: {first_line(exc)})") from None
    if len(x) != len(y):
        raise InputError(f"{where}: x has {len(x)} items and y {len(y)}; they must be the same length")
    if not len(x):
        raise InputError(f"{where}: holds no items")
    return images_nchw(x, where), _labels(y, where)


def _scan_folder(root: str, where: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of an ImageFolder tree: every class folder must hold an image."""
    if not os.path.isdir(root):
        raise InputError(f"{where}: no such folder")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputError(f"{where}: no class folders (the layout is {root}/CLASS/IMAGE, one folder per class)")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, name), followlinks=False)
                       for f in fs if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InputError(f"{where}: class folder '{name}' holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(f, label) for f in files]
    return classes, samples


def _image(path: str, decode: bool = True):
    """The opened PIL image (its pixels decoded when `decode`; a header alone otherwise), or the one
    InputError line that names the file."""
    Image = require("PIL.Image", "train")
    try:
        img = Image.open(path)
        if decode:
            img.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a damaged file
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {first_line(exc)})") from None
    return img


def _open_image(path: str, mode: str, size: tuple[int, int] | None):
    with _image(path) as img:
        img = img.convert(mode)
    if size and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), require("PIL.Image", "train").BILINEAR)
    return img


def _to_tensor(img) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())


class ImageFiles(Dataset):
    """Images decoded per item (a folder too large to keep in memory): (C x H x W, label)."""

    def __init__(self, samples: list[tuple[str, int]], mode: str, size: tuple[int, int], mean=None, std=None):
        self.samples, self.mode, self.size, self.mean, self.std = samples, mode, size, mean, std
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        x = _normalize(_to_tensor(_open_image(path, self.mode, self.size))[None], self.mean, self.std)[0]
        return x, label


def _folder(root: str, where: str, channels: int | None, image_size, mean, std, progress: bool):
    """(images as a tensor or an ImageFiles set, labels, class names); every image is decoded once here
    (into the tensor, or only checked where the folder stays on disk), so that a corrupt file is an
    error before any training."""
    classes, samples = _scan_folder(root, where)
    modes, sizes = set(), set()
    for path, _ in samples:  # headers only: each file's mode and size
        with _image(path, decode=False) as img:
            modes.add(img.mode)
            sizes.add((img.height, img.width))
    if image_size is None and len(sizes) > 1:
        shown = ", ".join(f"{h} x {w}" for h, w in sorted(sizes)[:4])
        raise InputError(f"{where}: images of {len(sizes)} sizes ({shown}{', ...' if len(sizes) > 4 else ''}); "
                         "pass image_size to resize them all to one")
    size = tuple(image_size) if image_size else next(iter(sizes))
    if channels is None:
        channels = 1 if modes <= {"1", "L", "I", "I;16", "F"} else 3
    if channels not in (1, 3):
        raise InputError(f"the model takes {channels} input channels; image folders give 1 (grey) or 3 (RGB)")
    mode = "L" if channels == 1 else "RGB"
    labels = torch.tensor([label for _, label in samples])
    reading = _iterate(samples, progress, f"reading {len(samples):,} images")
    if len(samples) * channels * size[0] * size[1] * 4 > IN_MEMORY_BYTES:
        for path, _ in reading:
            _image(path).close()
        return ImageFiles(samples, mode, size, mean, std), labels, classes, (channels, *size)
    x = torch.stack([_to_tensor(_open_image(p, mode, size)) for p, _ in reading])
    return _normalize(x, mean, std), labels, classes, (channels, *size)


def _iterate(items, progress: bool, label: str):
    if not progress:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)


def _callable(spec: str):
    from .loading import import_user_module

    module_name, _, attr = spec.partition(":")
    try:
        fn = import_user_module(module_name)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except Exception as exc:  # noqa: BLE001 - the user's module
        raise InputError(f"data '{spec}': cannot import it ({type(exc).__name__}: {first_line(exc)})") from None
    try:
        parts = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code
        raise InputError(f"data '{spec}': calling it failed ({type(exc).__name__}: {first_line(exc)})") from None
    if not (isinstance(parts, (tuple, list)) and len(parts) == 2):
        raise InputError(f"data '{spec}': must return (train, val) datasets; got a {type(parts).__name__}")
    return parts


def _dataset_labels(data: Dataset, where: str) -> torch.Tensor:
    """Every label of a dataset of (x, y): its `targets` / `tensors[1]` when it has them, else read item by item."""
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        return _labels(data.tensors[1].numpy(), where)
    if hasattr(data, "targets"):
        return _labels(np.asarray(data.targets), where)
    try:
        return _labels(np.array([int(data[i][1]) for i in range(len(data))]), where)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's dataset
        raise InputError(f"{where}: items must be (image, label) pairs ({type(exc).__name__}: {first_line(exc)})") from None


class _Mapped(Dataset):
    """A user's dataset with its images fitted to the model (channels, size) and normalized."""

    def __init__(self, data: Dataset, channels, size, mean, std):
        self.data, self.channels, self.size, self.mean, self.std = data, channels, size, mean, std

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i][:2]
        x = torch.as_tensor(x, dtype=torch.float32)
        x = x[None] if x.ndim == 2 else x
        return _normalize(fit_images(x[None], self.channels, self.size), self.mean, self.std)[0], int(y)


class Augmented(Dataset):
    """The train split with random flips (left-right) and crops (padded by an eighth of the side,
    zeros): the usual augmentation for small images, off unless asked for (`augment`)."""

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        h, w = x.shape[-2:]
        pad = max(h // 8, 1)
        padded = F.pad(x, (pad, pad, pad, pad))
        top, left = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
        return padded[..., top:top + h, left:left + w], y


# ----------------------------------------------------------------------------- one entry point

def load_data(spec: str, *, shape: tuple[int, ...] | None = None, image_size=None, mean=None, std=None,
              val_data: str | None = None, data_dir: str | None = None, download: bool = False,
              limit: int | None = None, seed: int = DEFAULT_SPLIT_SEED, augment: bool = False,
              progress: bool = False) -> DataSplits:
    """The three splits of the data `spec` names (see the module's docstring).

    shape: the model's input (C, H, W) when known: the built-ins are fitted to it (grey repeated to
    colour, resized); any other form must have it, after image_size (folders: their channels are
    converted). image_size: (H, W) or one int: every image resized to it. mean / std: per channel
    (or one value), applied after scaling to [0, 1]. val_data: a second folder or .npz held out as
    the test split. limit: the first N of each split. augment: random flips and crops on the train
    split (Augmented).
    """
    shape = tuple(shape[-3:]) if shape else None
    size = _size(image_size) if image_size is not None else None
    channels = shape[0] if shape else None
    from . import builtin_data

    if spec in DATASET_NAMES:
        if val_data:
            raise InputError(f"val_data goes with a folder or .npz; the built-in '{spec}' has its own test split")
        splits = builtin_data.load(spec, channels=channels, size=size or (tuple(shape[1:]) if shape else None),
                                   data_dir=data_dir, download=download, seed=seed)
        splits = _normalized(splits, mean, std)
    elif spec.startswith("folder:") or spec.endswith(".npz"):
        splits = _from_files(spec, val_data, channels, size, mean, std, seed, progress)
    elif ":" in spec and not os.path.exists(spec):
        if val_data:
            raise InputError("val_data goes with a folder or .npz; a callable returns its own (train, val)")
        splits = _from_callable(spec, channels, size, mean, std, seed)
    else:
        raise InputError(f"data '{spec}': not a built-in ({', '.join(DATASET_NAMES)}), folder:PATH, a .npz file "
                         "or pkg.module:callable")
    if shape and tuple(splits.shape) != shape:
        raise InputError(f"data {spec}: images are {' x '.join(map(str, splits.shape))}; the model takes "
                         f"{' x '.join(map(str, shape))} (pass image_size {shape[1]},{shape[2]} to resize them)")
    splits = splits.limited(limit)
    if augment:
        splits.train = Augmented(splits.train)
    return splits


def _size(image_size) -> tuple[int, int]:
    values = [image_size] if isinstance(image_size, int) else list(image_size)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or any(int(v) < 1 for v in values):
        raise InputError(f"image_size must be one or two positive integers (H or H,W); got {image_size}")
    return int(values[0]), int(values[1])


def _normalized(splits: DataSplits, mean, std) -> DataSplits:
    if mean is None and std is None:
        return splits
    parts = {name: TensorDataset(_normalize(d.tensors[0], mean, std), d.tensors[1])
             for name, d in (("train", splits.train), ("selection", splits.selection), ("test", splits.test))}
    return dataclasses.replace(splits, **parts)


def _read(spec: str, channels, size, mean, std, progress):
    """(images: tensor or ImageFiles, labels, shape) of one folder:PATH or PATH.npz."""
    if spec.startswith("folder:"):
        root = spec[len("folder:"):]
        x, y, _, shape = _folder(root, f"data folder {root}", channels, size, mean, std, progress)
        return x, y, shape
    x, y = _npz(spec, f"data {spec}")
    x = _normalize(fit_images(x, None, size), mean, std)  # its channels are the user's: never guessed
    return x, y, tuple(x.shape[1:])


def _subset(x, y, idx) -> Dataset:
    idx = np.asarray(idx)
    if isinstance(x, torch.Tensor):
        return TensorDataset(x[idx], y[idx])
    return Subset(x, idx.tolist())


def _from_files(spec: str, val_data: str | None, channels, size, mean, std, seed: int, progress: bool) -> DataSplits:
    x, y, shape = _read(spec, channels, size, mean, std, progress)
    if val_data:
        vx, vy, vshape = _read(val_data if val_data.endswith(".npz") or val_data.startswith("folder:")
                               else "folder:" + val_data, shape[0], size or shape[1:], mean, std, progress)
        if vshape != shape:
            raise InputError(f"val_data {val_data}: images are {vshape}, the training data's {shape}")
        idx = split_train(y.numpy(), fraction(SELECTION_SHARE), seed)
        classes = int(max(y.max(), vy.max())) + 1
        return DataSplits(_subset(x, y, idx["train"]), _subset(x, y, idx["selection"]),
                          _subset(vx, vy, np.arange(len(vy))), shape, classes, spec, seed, f"val_data {val_data}",
                          {"train": ("data", idx["train"]), "selection": ("data", idx["selection"]),
                           "test": ("val_data", np.arange(len(vy)))}, isinstance(x, torch.Tensor))
    idx = split_pool(y.numpy(), fraction(TEST_SHARE), fraction(SELECTION_SHARE / (1 - TEST_SHARE)), seed)
    return DataSplits(*(_subset(x, y, idx[k]) for k in ("train", "selection", "test")), shape, int(y.max()) + 1, spec,
                      seed, f"{TEST_SHARE:.0%} of each class held out (stratified)",
                      {k: ("data", v) for k, v in idx.items()}, isinstance(x, torch.Tensor))


def _from_callable(spec: str, channels, size, mean, std, seed: int) -> DataSplits:
    train, val = _callable(spec)
    y = _dataset_labels(train, f"data '{spec}' (train)")
    vy = _dataset_labels(val, f"data '{spec}' (val)")
    if not len(y) or not len(vy):
        raise InputError(f"data '{spec}': train and val must both hold items; got {len(y)} and {len(vy)}")
    try:
        first = torch.as_tensor(train[0][0], dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - the user's dataset
        raise InputError(f"data '{spec}': items must be (image, label) pairs ({type(exc).__name__})") from None
    first = first[None] if first.ndim == 2 else first
    if first.ndim != 3:
        raise InputError(f"data '{spec}': images must be C x H x W (or H x W); got shape {tuple(first.shape)}")
    shape = (channels or first.shape[0], *(size or first.shape[1:]))
    train, val = (_Mapped(d, channels, size, mean, std) for d in (train, val))
    idx = split_train(y.numpy(), fraction(SELECTION_SHARE), seed)
    return DataSplits(Subset(train, idx["train"].tolist()), Subset(train, idx["selection"].tolist()), val,
                      tuple(int(s) for s in shape), int(max(y.max(), vy.max())) + 1, spec, seed, "the callable's val",
                      {"train": ("train", idx["train"]), "selection": ("train", idx["selection"]),
                       "test": ("val", np.arange(len(vy)))}, in_memory=False)
