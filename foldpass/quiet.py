"""`quiet()`: torch.export, torch.onnx and onnx-graphsurgeon print progress, warnings and graph
dumps of failed traces; a library call (and a one-line CLI error) should not."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

_LOGGERS = ("torch.onnx", "onnxscript", "torch.export", "torch._export", "torch._dynamo", "torch._functorch",
            "torch.fx.experimental.symbolic_shapes", "torch._subclasses", "torch.utils._sympy")


@contextlib.contextmanager
def quiet():
    """Silences the tracing and export stack's loggers, warnings, stdout and stderr for the duration
    (torch.export prints the partial graph of a failed trace to stderr)."""
    loggers = [logging.getLogger(n) for n in _LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    gs_logger, gs_level = _graphsurgeon_logger()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if gs_logger is not None:
            gs_logger.severity = gs_level


def _graphsurgeon_logger():
    try:
        from onnx_graphsurgeon.logger import G_LOGGER
    except ImportError:  # pragma: no cover
        return None, None
    level = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    return G_LOGGER, level
