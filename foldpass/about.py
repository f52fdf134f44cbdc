"""The versions a bug report needs, read from the installed packages' metadata (no imports)."""

from __future__ import annotations

from importlib import metadata

from ._version import __version__

PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript")


def versions() -> dict[str, str]:
    """{'foldpass': ..., 'torch': ..., ...}; 'not installed' where a package is missing."""
    out = {"foldpass": __version__}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
