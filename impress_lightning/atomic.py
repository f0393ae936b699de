"""Atomic file writes: a reader (or a run killed at any moment) sees the old file or the new one, never half.

Every result file a run or a tool writes (retention.json, task_inference.json, the figures, an exported task
bank) goes through :func:`atomic_write` or :func:`atomic_output`: the content goes to a temporary file in the
same folder, which is then renamed over the target (``os.replace`` is atomic within one file system).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix, so writers that pick the format from it work);
    on success it is flushed to disk and renamed onto ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the bytes reach the disk before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8, or bytes) to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    return Path(path)
