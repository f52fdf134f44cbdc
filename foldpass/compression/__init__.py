"""foldpass.compression: a trained classifier and its data -> the fastest verified ONNX within an
accuracy budget (run.py), from a library of steps a user can also call one by one (steps.py), each
measured on the target (measure.py) and shown in a table and a plot (table.py).

    result = foldpass.compress(model, "mnist5k", max_drop=1.0)
    result.render(); result.save_onnx("fast.onnx")
"""

from .run import CompressResult, Row, compress, parse_steps
from .blocks import drop_blocks, plain_at_zero, residual_blocks
from .steps import STEPS, Decline, Depth, Job, State, depth, deskip, exact, int8, lowrank, prune

__all__ = ["STEPS", "CompressResult", "Decline", "Depth", "Job", "Row", "State", "compress", "depth", "deskip",
           "drop_blocks", "exact", "int8", "lowrank", "parse_steps", "plain_at_zero", "prune", "residual_blocks"]
