"""Optional dependencies: `require(module, extra)` imports one, or says in one line which extra
of foldpass brings it (exit 2). The core (`optimize`) needs none of them."""

from __future__ import annotations

import importlib

from .errors import InputError

# what each extra is for, as the error names it
EXTRAS = {
    "train": "homotopy training and its data sets (scikit-learn's digits, torchvision's MNIST)",
    "decompose": "low-rank decomposition (TensorLy, SciPy)",
    "plot": "plots (matplotlib)",
    "compress": "foldpass compress (Torch-Pruning, onnxruntime.quantization, TensorLy)",
}


def require(module: str, extra: str):
    """The imported module, or InputError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"{module} is missing: {EXTRAS.get(extra, extra)} need the '{extra}' extra: "
                         f"pip install 'foldpass[{extra}]'") from None
