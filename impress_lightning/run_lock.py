"""A lock on a run directory, so two live runs never write into the same one.

``fit`` (and a resume) takes ``.<run name>.lock`` next to the run directory (inside it, the lock would make a
fresh run's directory look used) before it writes anything, and releases it when it ends.
The lock is an exclusive ``flock`` on that file: the kernel drops it when the holding process dies, however it
dies (SIGKILL, OOM, node loss on a local disk), so a lock left by a killed run is stale by construction and
the next run takes it over. The file's content (pid, host, start time) only serves the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path



def lock_path(run_dir: Path) -> Path:
    """Where the lock of ``run_dir`` lives: ``<parent>/.<name>.lock``."""
    return run_dir.with_name(f".{run_dir.name}.lock")


class RunLockError(ValueError):
    """Another live run holds the directory; the message is one line that says what to do."""


class RunLock:
    """An acquired lock on ``run_dir`` (see :meth:`acquire`); :meth:`release` gives it back."""

    def __init__(self, run_dir: Path, fd: int, created: list[Path], took_over: dict | None) -> None:
        self.run_dir, self.path = run_dir, lock_path(run_dir)
        self._fd: int | None = fd
        self._created = created  # folders this lock made, deepest first
        self.took_over = took_over  # what the stale lock said, when a killed run left one

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        """Lock ``run_dir`` for this process (its parent folder is created if needed), or raise
        :class:`RunLockError` naming the live run that holds it."""
        run_dir = Path(run_dir)
        existing = next(folder for folder in (run_dir, *run_dir.parents) if folder.exists())
        if not existing.is_dir():
            raise RunLockError(f"{existing} is a file, not a folder, so run directory {run_dir} cannot be made: "
                               "remove it, or write elsewhere with --trainer.logger.init_args.save_dir <new dir>")
        path = lock_path(run_dir)
        created = [d for d in path.parents if not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise RunLockError(f"run directory {run_dir} is in use by another live run ({_describe(holder)}): "
                                   "wait for it to end, or write elsewhere with --trainer.logger.init_args.save_dir "
                                   "<new dir>") from None
            # A releasing run unlinks the file: if ours is no longer the one at `path`, lock the new one.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        return cls(run_dir, fd, created, stale or None)

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent); also remove the folders :meth:`acquire` created if the
        run left nothing in them (a run refused at set-up leaves no trace)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: a waiting run then retries on a fresh file
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        for folder in self._created:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "no details recorded"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
