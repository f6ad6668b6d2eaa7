"""One training at a time per work dir: an advisory lock on `<workdir>/train.lock`.

Two trainings writing one work dir corrupt it (each cleans the other's temporary checkpoint
folders; metrics.jsonl gets every step twice). The trainer holds `fcntl.flock` on the lock file
from its first write into the work dir to its end. The kernel drops a flock when the process that
holds it ends, however it ends (Ctrl-C, kill -9, out of memory), so a dead run never leaves a
false "busy" behind: the file may stay, the lock does not. The holder writes "PID on HOST" into
the file so a refused run can name it, and empties it again when done; the file itself is never
removed (a run that opened it just before the removal would lock a file no one else sees).

A multi-process run (jax.distributed) is one training: its process 0 takes the lock for all of
them and the outcome is broadcast, so every process stops together when the work dir is busy.
Locking in every process would make the processes of one run refuse each other on a shared file
system; a lock per process would not stop a second run. NFS (v4, and v3 through lockd) carries
flock across hosts; a file system without locks (Lustre mounted without `flock`) gets a warning
and the run goes on unlocked, as before there was a lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time

import jax

from unigen.errors import CheckpointError

LOCK_NAME = "train.lock"
# errno of flock on a file system that does not support it (the lock is then skipped)
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class WorkdirBusy(CheckpointError):
    """Another training holds the work dir's lock."""


class WorkdirLock:
    """The held lock (a context manager: `release` on exit); `fd` is None where the file system has
    no locks or in processes other than 0."""

    def __init__(self, path: str, fd: int | None):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # the holder's name goes with the lock
        except OSError:  # a full disk cannot stop the release: closing drops the lock anyway
            pass
        os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(workdir: str) -> WorkdirLock:
    """Lock `workdir` (created if missing) for this training, or raise WorkdirBusy naming the holder."""
    path = os.path.join(workdir, LOCK_NAME)
    fd, busy = None, False
    if jax.process_index() == 0:
        fd, busy = _try_lock(path)
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils
        busy = bool(multihost_utils.broadcast_one_to_all(np.int32(busy)))
    if busy:
        raise WorkdirBusy(f"{workdir} is in use by another training ({_holder(path)}, which holds {path}): wait "
                          f"for it to end or stop it, or give another --workdir")
    return WorkdirLock(path, fd)


def _try_lock(path: str) -> tuple[int | None, bool]:
    """(file descriptor holding the lock, busy)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, True
    except OSError as e:
        os.close(fd)
        if e.errno not in _NO_LOCKS:
            raise
        print(f"warning: the file system of {path} does not support locks ({e.strerror}); nothing stops a second "
              f"training on this work dir", file=sys.stderr, flush=True)
        return None, False
    holder = f"PID {os.getpid()} on {socket.gethostname()}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, holder, 0)
    return fd, False


def _holder(path: str, wait_s: float = 2.0) -> str:
    """'PID 123 on host' as the holder wrote it; the holder writes it just after locking, so an
    empty file is read again for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text or time.monotonic() > deadline:
            return text or "its PID was not written yet"
        time.sleep(0.05)
