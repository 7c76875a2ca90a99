"""The disk the service writes to: start-up checks and the errors of a full or read-only
file system, told in one line (docs/operations-disk.md)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ia_continu.config import Settings

# The errors that mean "the disk cannot take this write": answered 503, never a crash.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
PROBE_BYTES = 64 * 1024
_SQLITE_DISK_MESSAGES = ("database or disk is full", "readonly database", "disk i/o error")


class DataDirError(Exception):
    """A directory the service must write to cannot be written."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path, self.errno = path, error.errno
        name = errno.errorcode.get(error.errno or 0, "?")
        super().__init__(
            f"cannot write to {path}: [{name}] {error.strerror or error} (errno {error.errno})"
        )


def check_writable_dir(path: Path, *, probe_bytes: int = PROBE_BYTES) -> None:
    """Create ``path`` if needed and write, fsync and delete a probe file in it.

    Raises DataDirError naming the path and the errno (read-only, full, no permission)."""
    probe = path / f".ia-continu-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * probe_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DataDirError(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_data_dirs(settings: Settings) -> None:
    """The data directory and the model cache must take writes before anything starts."""
    check_writable_dir(settings.data_dir.resolve())
    check_writable_dir(settings.models_dir.resolve(), probe_bytes=1)


def is_disk_full_error(exc: BaseException) -> bool:
    """An OSError with a full/read-only errno, or SQLite's own word for it."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    text = str(exc).lower()
    return any(message in text for message in _SQLITE_DISK_MESSAGES)


def describe_disk_error(exc: BaseException) -> str:
    """One line for the log: which file and which error."""
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "?")
        where = exc.filename if exc.filename is not None else "?"
        return f"disk cannot take a write to {where}: [{name}] {exc.strerror or exc}"
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"database disk cannot take a write: {first}"
