"""A network trained on a colour image folder, end to end through the command line (docs/data_colour.md).

    python tools/colour_folder.py              # build the folder, train, optimize, write the page
    python tools/colour_folder.py --epochs 5   # a quicker run (the page says which)

The folder: scikit-learn's 1,797 digits (offline), each coloured (a random foreground on a random
background colour, seeded) and resized to 3 x 32 x 32, saved as PNG files in the ImageFolder layout
(.cache/colour_folder/digits/0 ... 9). Then, as a user would run them:

    foldpass train tools.colour_folder:build --data folder:.cache/colour_folder/digits -o model.pt2 ...
    foldpass optimize model.pt2 -o model.onnx

and the ONNX file is evaluated under onnxruntime on the test split (the same split foldpass made).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CACHE = os.path.join(ROOT, ".cache", "colour_folder")
DOCS = os.path.join(ROOT, "docs")


def build():
    """The paper's CNN3 (one blended skip) for 3 x 32 x 32 colour images, 10 classes."""
    from foldpass.models import CNN3

    return CNN3(width=16, in_channels=3, size=32)


def make_folder(root: str) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(0)
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).numpy()
    for i, (img, label) in enumerate(zip(x, data.target)):
        fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        while np.abs(fg - bg).sum() < 150:  # keep the digit visible
            fg = rng.uniform(0, 255, 3)
        pixels = (bg[None, None] * (1 - img[0][..., None]) + fg[None, None] * img[0][..., None]).astype(np.uint8)
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
        Image.fromarray(pixels, "RGB").save(os.path.join(root, str(label), f"{i:04d}.png"))
    return len(x)


def onnx_accuracy(path: str, folder: str) -> float:
    """The written ONNX file's accuracy on the test split foldpass makes of the folder."""
    import numpy as np
    import onnxruntime as ort

    from foldpass import load_data

    test = load_data(f"folder:{folder}").test
    x, y = test.tensors
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float((np.argmax(scores, 1) == y.numpy()).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    folder = os.path.join(CACHE, "digits")
    if not os.path.isdir(folder):
        print(f"wrote {make_folder(folder)} images to {folder}", flush=True)
    pt2, onnx_path, hist = (os.path.join(CACHE, name) for name in ("model.pt2", "model.onnx", "history.json"))
    train = [sys.executable, "-m", "foldpass", "train", "tools.colour_folder:build", "--data", f"folder:{folder}",
             "-o", pt2, "--epochs", str(args.epochs), "--history", hist, "--force"]
    optimize = [sys.executable, "-m", "foldpass", "optimize", pt2, "-o", onnx_path, "--force"]
    seconds = {}
    for name, cmd in (("train", train), ("optimize", optimize)):
        began = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        seconds[name] = time.perf_counter() - began
    history = json.load(open(hist))
    import onnx
    import torch

    dims = [d.dim_value or d.dim_param for d in onnx.load(onnx_path).graph.input[0].type.tensor_type.shape.dim]
    result = {"data": history["data"], "test_acc": history["test_acc"], "onnx_test_acc": onnx_accuracy(onnx_path, folder),
              "onnx_input": dims, "epochs": args.epochs, "seconds": seconds, "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "ops": [n.op_type for n in onnx.load(onnx_path).graph.node]}
    d = result["data"]
    lines = ["# A network trained on a colour image folder", "",
             f"Measured {result['date']} (torch {result['torch']}, 2-core CPU) with `python tools/colour_folder.py"
             f"{'' if args.epochs == 30 else f' --epochs {args.epochs}'}`.", "",
             "The folder: scikit-learn's 1,797 digits, each coloured (random foreground and background colours) and "
             "resized to 3 x 32 x 32, saved as PNG files, one sub-folder per class. The commands, as a user runs them:",
             "", "```bash",
             f"foldpass train tools.colour_folder:build --data folder:{os.path.relpath(folder, ROOT)} -o model.pt2 "
             f"--epochs {args.epochs}", "foldpass optimize model.pt2 -o model.onnx", "```", "",
             "| | |", "|---|---|",
             f"| splits | {d['train']:,} train / {d['selection']:,} selection / {d['test']:,} test (seed {d['seed']}; "
             f"test: {d['test_from']}) |",
             f"| input | {' x '.join(map(str, d['shape']))} (read from the images); ONNX input {dims} |",
             "| network | the paper's CNN3, width 16, one skip blended and removed at t = 0 (recipe foldpass) |",
             f"| test accuracy, PyTorch at t = 0 | {result['test_acc']:.2%} |",
             f"| test accuracy, the optimized ONNX file | {result['onnx_test_acc']:.2%} |",
             f"| ONNX ops | {', '.join(sorted(set(result['ops'])))} ({len(result['ops'])} in all) |",
             f"| wall time | train {seconds['train']:.0f} s, optimize {seconds['optimize']:.0f} s |", ""]
    with open(os.path.join(DOCS, "data_colour.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(DOCS, "data_colour.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
