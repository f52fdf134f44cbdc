"""The data every training command takes (foldpass.data): each form, the three splits, bad data as
one line with exit 2 and nothing written, and the test split that no choice reads."""

import json
import os
import textwrap

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import models
from foldpass import load_data
from foldpass.cli import main
from foldpass.data import Augmented, ImageFiles
from foldpass.errors import InputError
from foldpass.homotopy import train_homotopy


def image_folder(root, classes=3, per_class=10, size=(32, 32), mode="RGB", seed=0):
    """classes x per_class images, each class a colour of its own plus noise (learnable)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(per_class):
            channels = 3 if mode == "RGB" else 1
            base = np.zeros((*size, channels)) + 60 * c
            pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels if channels == 3 else pixels[..., 0], mode).save(root / f"class_{c}" / f"{i}.png")
    return root


def all_indices(splits):
    return {name: set(map(int, idx)) for name, (_, idx) in splits.indices.items()}


def assert_disjoint(splits):
    pools = {name: pool for name, (pool, _) in splits.indices.items()}
    idx = all_indices(splits)
    for a in idx:
        for b in idx:
            if a < b and pools[a] == pools[b]:
                assert not idx[a] & idx[b], f"{a} and {b} share items"


# ----------------------------------------------------------------------------- the built-ins

def test_mnist5k_is_3500_train_500_selection_1000_test_disjoint_and_fixed():
    splits = load_data("mnist5k")
    assert (len(splits.train), len(splits.selection), len(splits.test)) == (3500, 500, 1000)
    assert torch.bincount(splits.test.tensors[1]).tolist() == [100] * 10
    assert torch.bincount(splits.selection.tensors[1]).tolist() == [50] * 10
    assert_disjoint(splits)
    assert sum(len(v) for v in all_indices(splits).values()) == 5000
    again = load_data("mnist5k")
    assert all(np.array_equal(again.indices[k][1], splits.indices[k][1]) for k in splits.indices)
    assert len(torch.unique(splits.train.tensors[1][:64])) == 10  # the first N mix the classes
    seen = {img.numpy().tobytes() for img in splits.train.tensors[0]}
    assert not any(img.numpy().tobytes() in seen for img in splits.test.tensors[0])
    assert splits.describe() == {"source": "mnist5k", "shape": [1, 28, 28], "classes": 10, "seed": 0, "train": 3500,
                                 "selection": 500, "test": 1000, "test_from": "100 of each class held out (stratified)"}


def test_mnist5k_test_split_is_the_former_validation_split():
    """The 1,000 images foldpass validated on before (400 / 100 per class, seed 0) are the test split."""
    from foldpass.builtin_data import mnist5k_arrays

    _, y = mnist5k_arrays()
    rng = np.random.default_rng(0)
    former = set()
    for c in np.unique(y.numpy()):
        former |= set(rng.choice(np.flatnonzero(y.numpy() == c), size=100, replace=False).tolist())
    assert set(map(int, load_data("mnist5k").indices["test"][1])) == former


def test_a_split_seed_moves_the_selection_not_the_sizes():
    a, b = load_data("digits"), load_data("digits", seed=1)
    assert len(a.selection) == len(b.selection) and not np.array_equal(a.indices["selection"][1],
                                                                        b.indices["selection"][1])
    assert_disjoint(b)


def test_builtins_follow_the_models_input_shape():
    splits = load_data("mnist5k", shape=(3, 32, 32), limit=8)
    x = splits.train.tensors[0]
    assert x.shape == (8, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])  # grey repeated over the channels
    assert load_data("digits", image_size=40, limit=2).shape == (1, 40, 40)


def test_mean_and_std_normalize_every_split():
    raw, norm = load_data("digits", limit=16), load_data("digits", limit=16, mean=[0.5], std=[0.25])
    for a, b in ((raw.train, norm.train), (raw.test, norm.test)):
        assert torch.allclose((a.tensors[0] - 0.5) / 0.25, b.tensors[0])
    with pytest.raises(InputError, match="std"):
        load_data("digits", std=[0.0])


# ----------------------------------------------------------------------------- a folder, an .npz, a callable

def test_an_image_folder_of_colour_images(tmp_path):
    splits = load_data(f"folder:{image_folder(tmp_path / 'imgs')}")
    assert splits.shape == (3, 32, 32) and splits.num_classes == 3 and splits.in_memory
    assert (len(splits.train), len(splits.selection), len(splits.test)) == (21, 3, 6)
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert_disjoint(splits)


def test_a_folder_with_a_separate_val_folder_and_a_size(tmp_path):
    image_folder(tmp_path / "train", size=(40, 30))
    image_folder(tmp_path / "val", per_class=4, size=(20, 20), seed=1)
    splits = load_data(f"folder:{tmp_path / 'train'}", val_data=str(tmp_path / "val"), image_size=(24, 24))
    assert splits.shape == (3, 24, 24) and len(splits.test) == 12 and splits.test_from.startswith("val_data")
    assert len(splits.train) + len(splits.selection) == 30 and splits.test[0][0].shape == (3, 24, 24)


def test_grey_images_give_one_channel_or_the_models_three(tmp_path):
    root = image_folder(tmp_path / "grey", mode="L", size=(16, 16))
    assert load_data(f"folder:{root}").shape == (1, 16, 16)
    assert load_data(f"folder:{root}", shape=(3, 16, 16)).shape == (3, 16, 16)


def test_a_folder_too_large_for_memory_is_decoded_per_item(tmp_path, monkeypatch):
    import foldpass.data

    monkeypatch.setattr(foldpass.data, "IN_MEMORY_BYTES", 1)
    splits = load_data(f"folder:{image_folder(tmp_path / 'imgs')}", mean=[0.5], std=[0.5])
    assert not splits.in_memory and isinstance(splits.train.dataset, ImageFiles)
    x, y = splits.train[0]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1


def test_an_npz_in_any_layout(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    for name, x in (("nchw", rng.random((40, 3, 8, 8), dtype=np.float32)),
                    ("nhwc", rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)),
                    ("nhw", rng.random((40, 8, 8)))):
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        splits = load_data(str(tmp_path / f"{name}.npz"))
        assert splits.shape == ((1, 8, 8) if name == "nhw" else (3, 8, 8)) and splits.num_classes == 4
        assert (len(splits.train), len(splits.selection), len(splits.test)) == (28, 4, 8)
        assert splits.train.tensors[0].max() <= 1
        assert_disjoint(splits)


def test_a_callable_returning_train_and_val(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset

        def build():
            g = torch.Generator().manual_seed(0)
            make = lambda n: TensorDataset(torch.rand(n, 1, 12, 12, generator=g), torch.arange(n) % 5)
            return make(50), make(20)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    splits = load_data("mydata:build", shape=(1, 12, 12))
    assert (len(splits.train), len(splits.selection), len(splits.test)) == (45, 5, 20)
    assert splits.num_classes == 5 and splits.test_from == "the callable's val"
    assert_disjoint(splits)
    x, y = splits.selection[0]
    assert x.shape == (1, 12, 12) and isinstance(y, int)


def test_augment_flips_and_crops_the_train_split_only():
    splits = load_data("digits", augment=True, limit=32)
    assert isinstance(splits.train, Augmented) and isinstance(splits.test, TensorDataset)
    torch.manual_seed(0)
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and y == splits.train.data[0][1]


# ----------------------------------------------------------------------------- bad data: one line, exit 2, nothing written

def _bad_cases(tmp_path):
    """name -> (--data ..., extra flags, words the one line must hold)."""
    cases = {}
    corrupt = image_folder(tmp_path / "corrupt", per_class=3)
    (corrupt / "class_0" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cases["corrupt image"] = (f"folder:{corrupt}", [], "not a readable image")
    empty = image_folder(tmp_path / "empty", per_class=3)
    os.makedirs(empty / "class_9")
    cases["empty class folder"] = (f"folder:{empty}", [], "holds no image")
    mixed = image_folder(tmp_path / "mixed", per_class=3)
    Image.new("RGB", (20, 20)).save(mixed / "class_1" / "odd.png")
    cases["mixed sizes"] = (f"folder:{mixed}", [], "--image-size")
    np.savez(tmp_path / "lengths.npz", x=np.zeros((10, 1, 28, 28), np.float32), y=np.zeros(9, np.int64))
    cases["x and y lengths"] = (str(tmp_path / "lengths.npz"), [], "same length")
    np.savez(tmp_path / "pickled.npz", x=np.array([object()] * 4, dtype=object), y=np.zeros(4, np.int64))
    cases["pickled npz"] = (str(tmp_path / "pickled.npz"), [], "allow_pickle=False")
    np.savez(tmp_path / "negative.npz", x=np.zeros((10, 1, 28, 28), np.float32), y=np.full(10, -1))
    cases["negative label"] = (str(tmp_path / "negative.npz"), [], "out of range")
    np.savez(tmp_path / "many.npz", x=np.zeros((20, 1, 28, 28), np.float32), y=np.arange(20))
    cases["label past the model's outputs"] = (str(tmp_path / "many.npz"), [], "out of range")
    cases["no such data"] = ("nothing-here.npz", [], "no such file")
    return cases


def test_bad_data_is_one_line_exit_2_and_no_output(tmp_path, capsys):
    for name, (data, extra, words) in _bad_cases(tmp_path).items():
        out = tmp_path / f"{name.replace(' ', '_')}.pt2"
        code = main(["train", "models:CNN3", "-o", str(out), "--epochs", "1", "--data", data, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, (name, err)
        assert len(err.splitlines()) == 1 and words in err, (name, err)
        assert not out.exists() and not [p for p in os.listdir(tmp_path) if "foldpass-tmp" in p], name


# ----------------------------------------------------------------------------- the test split is read at the end only

def test_a_poisoned_test_split_changes_no_choice():
    """Training reads train and selection only: with the test split replaced by noise and wrong
    labels, every stage's log and every weight are the same; only the final test accuracy moves."""
    clean = load_data("digits", limit=96)
    poisoned = load_data("digits", limit=96)
    x, y = poisoned.test.tensors
    poisoned.test = TensorDataset(torch.randn_like(x) * 100, (y + 1) % 10)
    runs = []
    for splits in (clean, poisoned):
        torch.manual_seed(0)
        runs.append(train_homotopy(models.CNN3(width=4), recipe="no-teacher", epochs=2, steps_per_t=3, data=splits))
    a, b = runs
    assert [vars(h) | {"seconds": 0} for h in a.history] == [vars(h) | {"seconds": 0} for h in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert a.test_acc != b.test_acc  # the test split was read, at the end


# ----------------------------------------------------------------------------- every input shape, end to end

BUILDERS = textwrap.dedent("""
    import models

    def grey28():
        return models.CNN3(width=4, in_channels=1, size=28, num_classes=3)

    def colour32():
        return models.CNN3(width=4, in_channels=3, size=32, num_classes=3)

    def colour224():
        return models.CNN3(width=2, in_channels=3, size=224, num_classes=3)
""")


@pytest.mark.parametrize("builder, size, mode", [("grey28", 28, "L"), ("colour32", 32, "RGB"),
                                                 ("colour224", 224, "RGB")])
def test_each_input_shape_trains_and_optimizes_to_an_onnx_of_that_shape(tmp_path, monkeypatch, builder, size, mode):
    (tmp_path / "shape_models.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = image_folder(tmp_path / "imgs", per_class=6, size=(size, size), mode=mode)
    pt2, out, hist = tmp_path / "m.pt2", tmp_path / "m.onnx", tmp_path / "h.json"
    assert main(["train", f"shape_models:{builder}", "--data", f"folder:{root}", "-o", str(pt2), "--epochs", "2",
                 "--steps-per-t", "2", "--batch-size", "4", "--recipe", "no-teacher", "--history", str(hist)]) == 0
    assert main(["optimize", str(pt2), "-o", str(out)]) == 0
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1 if mode == "L" else 3, size, size]
    history = json.loads(hist.read_text())
    assert history["data"]["shape"] == dims[1:] and history["data"]["test"] == 3  # a fifth of 6 per class


def test_workers_load_a_folder_decoded_per_item(tmp_path, monkeypatch):
    import foldpass.data

    monkeypatch.setattr(foldpass.data, "IN_MEMORY_BYTES", 1)
    (tmp_path / "shape_models.py").write_text(BUILDERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = image_folder(tmp_path / "imgs", per_class=6)
    assert main(["train", "shape_models:colour32", "--data", f"folder:{root}", "-o", str(tmp_path / "m.pt2"),
                 "--epochs", "1", "--steps-per-t", "2", "--batch-size", "4", "--recipe", "no-teacher",
                 "--workers", "1", "--augment"]) == 0
