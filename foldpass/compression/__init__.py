"""foldpass.compression: a trained classifier and its data -> the fastest verified ONNX within an
accuracy budget (run.py), from a library of steps a user can also call one by one (steps.py), each
measured on the target (measure.py) and shown in a table and a plot (table.py).

    result = foldpass.compress(model, "mnist5k", max_drop=1.0)
    result.render(); result.save_onnx("fast.onnx")
"""

from .run import CompressResult, Row, compress, parse_steps
from .steps import STEPS, Decline, Job, State, deskip, exact, int8, lowrank, plain_at_zero, prune

__all__ = ["STEPS", "CompressResult", "Decline", "Job", "Row", "State", "compress", "deskip", "exact", "int8", "lowrank",
           "parse_steps", "plain_at_zero", "prune"]
