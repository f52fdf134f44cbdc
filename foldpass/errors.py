"""foldpass's errors: each carries the exit code the CLI returns for it.

exit 2: bad input or usage (InputError)  -- nothing was written
exit 1: the verification gate failed (VerificationError) -- nothing was written
A pass that raises is wrapped in PassError, which names the pass (exit 1: it is foldpass's bug).
"""


class FoldpassError(Exception):
    """Base class: a one-line message meant for the user, and an exit code."""

    exit_code = 1


class InputError(FoldpassError):
    """The input (file, module, shape, option) cannot be used; nothing was written."""

    exit_code = 2


class VerificationError(FoldpassError):
    """The optimized model does not compute what the original computes."""

    exit_code = 1

    def __init__(self, message: str, max_abs_error: float | None = None, tolerance: float | None = None):
        super().__init__(message)
        self.max_abs_error = max_abs_error
        self.tolerance = tolerance


class PassError(FoldpassError):
    """A pass raised or left an invalid graph; the message names the pass."""

    exit_code = 1

    def __init__(self, pass_name: str, cause: BaseException):
        super().__init__(f"pass '{pass_name}' failed: {type(cause).__name__}: {cause}")
        self.pass_name = pass_name
        self.__cause__ = cause


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line: what a one-line error shows."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
