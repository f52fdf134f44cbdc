"""The one policy for every file foldpass writes (-o, --report, --json, --plot, --history, --checkpoint).

Before any work, `check_outputs` refuses:
- a name that is not valid UTF-8, a name ending in '/', a directory, a missing or unwritable directory;
- a path that is one of the inputs, or that two outputs share;
- an existing file or a symbolic link (dangling too), unless force;
- a device node or a pipe, even with force (moving a file into place would replace the node itself).

`atomic_write` then writes through a temporary file created exclusively (mkstemp: O_CREAT | O_EXCL,
a random name, a symbolic link planted there is never followed) beside the target, runs the check
on it, and moves it into place. Without force the move is `os.link` (fails if a file appeared at
the target meanwhile: two processes cannot both "write" the same new file), with force
`os.replace`. The temporary file is removed on every exit path; the CLI turns SIGTERM into an
exception so that this holds for a killed process too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from typing import Callable, Iterable

from .errors import FoldpassError, InputError

_TMP_SUFFIX = ".foldpass-tmp"


def display(path: str) -> str:
    """A path as it can be printed, whatever bytes its name holds."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def check_output(path: str, what: str = "output", force: bool = False) -> str:
    """The absolute path to write, or InputError naming `what` (a flag) and the path."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{what} {display(path)!r}: the name is not valid UTF-8; choose another name") from None
    if path.endswith(os.sep) or os.path.isdir(path):
        raise InputError(f"{what} {path}: is a directory; give a file name")
    full = os.path.abspath(path)
    directory = os.path.dirname(full)
    if not os.path.isdir(directory):
        raise InputError(f"{what} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: directory {directory} is not writable")
    if os.path.exists(full) and not stat.S_ISREG(os.stat(full).st_mode):  # a device, a pipe: even with force
        raise InputError(f"{what} {path}: is not a regular file (a device or a pipe); foldpass writes only files")
    if os.path.islink(full) and not force:
        raise InputError(f"{what} {path}: is a symbolic link; pass force=True to replace the link itself")
    if os.path.lexists(full) and not force:
        raise InputError(f"{what} {path} exists; pass force=True to overwrite it")
    return full


def check_outputs(outputs: dict[str, str | None], inputs: Iterable[str | None] = (), force: bool = False) -> dict[str, str]:
    """check_output for each named output, then: none is an input, no two are the same file."""
    checked: dict[str, str] = {}
    for what, path in outputs.items():
        if path is None:
            continue
        for source in inputs:
            if source and os.path.exists(source) and _same(os.path.abspath(path), source):
                raise InputError(f"{what} {path}: is the input file; write somewhere else")
        full = check_output(path, what, force)
        for other, other_full in checked.items():
            if other_full == full:
                raise InputError(f"{what} {path}: is also the {other} path")
        checked[what] = full
    return checked


def atomic_write(path: str, write: Callable[[str], None], check: Callable[[str], None] | None = None,
                 force: bool = False) -> None:
    """write(tmp) fills a fresh temporary file beside `path`; check(tmp) may raise to abort; then the
    file is moved into place (see the module docstring). On any failure nothing is left behind."""
    path = os.path.abspath(path)
    directory, name = os.path.split(path)
    # the target's extension last: torch.export.save warns about an archive whose name does not end in .pt2
    extension = os.path.splitext(name)[1][:16]
    fd, tmp = tempfile.mkstemp(prefix=f".{name[:40]}.", suffix=_TMP_SUFFIX + extension, dir=directory)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a written file gets the usual mode
    os.close(fd)
    try:
        write(tmp)
        if check is not None:
            check(tmp)
        _commit(tmp, path, force)
    except OSError as exc:  # disk full, permissions: an existing file stays as it was
        if isinstance(exc, FileExistsError) and not force:
            raise InputError(f"{display(path)} appeared while foldpass was writing it; pass force=True to "
                             "overwrite it") from exc
        raise FoldpassError(f"cannot write {display(path)}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _commit(tmp: str, path: str, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with EEXIST if a file (or link) appeared at path meanwhile
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):  # a file system without hard links: re-check, then rename
            raise FileExistsError(errno.EEXIST, "exists", path) from None
        os.rename(tmp, path)


def write_text(path: str, text: str, force: bool = False) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write, force=force)


def write_json(path: str, data, force: bool = False) -> None:
    import json

    write_text(path, json.dumps(data, indent=2) + "\n", force=force)
