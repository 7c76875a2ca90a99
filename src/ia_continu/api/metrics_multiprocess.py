"""The multi-worker plumbing of the metrics: the PROMETHEUS_MULTIPROC_DIR of this instance,
its preparation and clean-up, dead workers and the version each live worker serves."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from ia_continu.config import PROMETHEUS_MULTIPROC_ENV, Settings, get_runtime_tmpfs_dirs

# A tmpfs with less free space than this is passed over (each worker's files take ~64 KiB
# each and grow by doubling; a write into a memory-mapped page the file system cannot
# back is a SIGBUS that kills the worker, not an error).
MIN_METRICS_DIR_FREE_BYTES = 16 * 1024 * 1024


_SERVED_PREFIX = "served_"  # served_<pid>.txt: the version that worker serves


def _instance_name(settings: Settings) -> str:
    # One directory per host and port: replicas sharing a volume (compose --scale api=3)
    # or two servers on one machine never mix or wipe each other's files.
    return f"{socket.gethostname()}-{settings.port}"


def _has_room(directory: Path) -> bool:
    try:
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            return False
        stat = os.statvfs(directory)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= MIN_METRICS_DIR_FREE_BYTES


def multiprocess_dir_for(settings: Settings) -> Path:
    """Where `ia-continu serve` keeps the Prometheus multiprocess files: IA_METRICS_DIR,
    else a memory-backed directory ($XDG_RUNTIME_DIR, /dev/shm) so that a full or
    read-only data disk cannot reach the memory-mapped files, else the data directory."""
    if settings.metrics_dir is not None:
        return settings.metrics_dir / _instance_name(settings)
    for base in get_runtime_tmpfs_dirs():
        if _has_room(base):
            return base / "ia-continu-metrics" / _instance_name(settings)
    return settings.data_dir / "prometheus" / _instance_name(settings)


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """Create and empty the shared metrics directory, and export it to the workers.

    Call before uvicorn starts (and before anything imports prometheus_client).
    Raises OSError when the directory cannot be created or written."""
    path = multiprocess_dir_for(settings).resolve()
    path.mkdir(parents=True, exist_ok=True)
    # Files of a previous run would be summed in as if its processes were still alive.
    for stale in [*path.glob("*.db"), *path.glob(f"{_SERVED_PREFIX}*")]:
        stale.unlink(missing_ok=True)
    probe = path / ".write-probe"
    probe.write_bytes(b"\0" * 4096)  # ENOSPC / EROFS here, not a SIGBUS in a worker later
    probe.unlink()
    os.environ[PROMETHEUS_MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """Delete the directory when the server stops (tmpfs is memory)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):  # the shared parent, when now empty
        path.parent.rmdir()


def is_multiprocess_mode() -> bool:
    """Whether prometheus_client (chosen at its import) writes values to shared files."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def mark_dead_workers(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist (a killed worker that
    uvicorn replaced); counters and histograms of dead workers are kept, as they must."""
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for file in path.glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if pid not in dead and not _pid_alive(pid):
            dead.add(pid)
    for file in path.glob(f"{_SERVED_PREFIX}*.txt"):
        try:
            pid = int(file.stem.removeprefix(_SERVED_PREFIX))
        except ValueError:
            continue
        if pid in dead or not _pid_alive(pid):
            dead.add(pid)
            file.unlink(missing_ok=True)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return sorted(dead)


def read_served_versions(path: Path) -> dict[int, str]:
    """pid -> the version each live worker serves (one small file per worker)."""
    served: dict[int, str] = {}
    for file in path.glob(f"{_SERVED_PREFIX}*.txt"):
        try:
            pid = int(file.stem.removeprefix(_SERVED_PREFIX))
            version = file.read_text().strip()
        except (ValueError, OSError):
            continue
        if version and _pid_alive(pid):
            served[pid] = version
    return served


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
