"""A full disk is an expected failure: one line naming the path and the space it needs.

Without this, a checkpoint save on a full disk fails in orbax's writer threads and prints
hundreds of lines (each thread's tensorstore error, absl's ERROR records, Python's reports of
abandoned writes, then the metrics plot and TensorBoard failing again on the way out), while
the work dir itself is fine: orbax never renames a half-written step into place, so the run
resumes exactly from its last checkpoint once there is space. The trainer therefore
  - checks the free space before each checkpoint (`has_space`: the size of the newest
    checkpoint on disk, or the state's bytes before the first), and stops with DiskFull
    before orbax starts writing;
  - turns a write that still fails for lack of space (`writing`) into DiskFull naming the path;
  - drops the follow-up reports of the same failure (`quiet_disk_full_reports`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from unigen.errors import UnigenError

_NO_SPACE_TEXT = ("No space left on device", "os_error_code='28'", "Disk quota exceeded", "os_error_code='122'")


class DiskFull(UnigenError, OSError):
    """A write into the work dir failed (or would fail) for lack of disk space."""


def size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000


def free_bytes(path: str) -> int | None:
    """Bytes this process may still write on the file system of `path` (root may use the blocks
    reserved for it); None where the file system reports no sizes (some network mounts)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or ".")
    except OSError:
        return None
    if st.f_blocks == 0:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def folder_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(d, name))
            except OSError:  # removed while walking (an old step being deleted)
                pass
    return total


def disk_full(path: str, needed: int | None, resume_hint: str = "") -> DiskFull:
    free = free_bytes(path)
    need = f"it needs about {size_text(needed)}" if needed else "it needs more space"
    have = f", {size_text(free)} free" if free is not None else ""
    return DiskFull(f"no space left on the disk of {path}: {need}{have}; free space there (or give another "
                    f"--workdir){resume_hint}")


def has_space(path: str, needed: int) -> bool:
    """False when the file system of `path` reports fewer than `needed` bytes free."""
    free = free_bytes(path)
    return free is None or free >= needed


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc`, or an exception it was raised from, is a lack of disk space (an OSError
    ENOSPC / EDQUOT, or tensorstore's error text for one)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(t in str(exc) for t in _NO_SPACE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def writing(path: str, needed: int | None = None, resume_hint: str = ""):
    """Run a write of about `needed` bytes to `path`; a failure for lack of space becomes DiskFull."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full(path, needed, resume_hint) from None
        raise


class _DiskFullRecordFilter(logging.Filter):
    """Drops log records (absl's ERROR lines from orbax's writer threads) about a lack of space."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(exc) or any(t in record.getMessage() for t in _NO_SPACE_TEXT))


_FILTER = _DiskFullRecordFilter()


def quiet_disk_full_reports() -> None:
    """From now on, drop the log records of writes that failed for lack of space: the DiskFull
    raised for the same failure says it once (an idempotent install)."""
    for name in ("absl", "orbax", "asyncio"):  # asyncio: "Future exception was never retrieved"
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
