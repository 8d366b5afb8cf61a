"""Small helpers used across lvseg."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["atomic_path", "atomic_write_text", "torch_load"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    A crash while writing leaves the previous ``path`` (if any) untouched, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol >= 2 (torch.save's legacy format starts with one)


def torch_load(path: str | Path, *, expected: str, allowed_globals: Sequence[Any] = (),
               weights_only: bool = True) -> Any:
    """``torch.load(path, map_location="cpu")`` that fails with a :class:`~lvseg.errors.CheckpointError` naming
    the file and what is wrong with it: empty, not a PyTorch file, truncated or damaged, or holding objects outside
    the allow-list. PyTorch's own text (and its advice to retry with ``weights_only=False``, which would run
    pickled code) never reaches the user; the original exception stays chained for debugging.

    Args:
        path: the file to read.
        expected: what the file should be, for the message (e.g. "an official ReferFormer .pth checkpoint").
        allowed_globals: the non-tensor classes the file may hold (``torch.serialization.safe_globals``).
        weights_only: ``False`` only for files lvseg wrote itself (training checkpoints).
    """
    import pickle
    import zipfile

    import torch

    from .errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file; it must be {expected}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from exc
    if not head:
        raise CheckpointError(f"{path} is empty (0 bytes); it must be {expected}: copy or download it again")
    is_zip, is_pickle = head == _ZIP_MAGIC, head[0] == _PICKLE_PROTO
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except MemoryError:
        raise
    except Exception as exc:  # torch.load raises RuntimeError, UnpicklingError, EOFError, KeyError, ... by case
        text = str(exc)
        blocked = re.search(r"GLOBAL ([\w.]+)", text)
        if blocked and weights_only:
            reason = (f"it holds an object of type {blocked.group(1)}, which is not among the types lvseg accepts "
                      "in a checkpoint (tensors, numbers, strings, containers, argparse.Namespace): lvseg does not "
                      "run code stored in a file. It must be " + expected)
        elif not (is_zip or is_pickle):
            reason = f"it is not a PyTorch checkpoint (it starts with bytes {head!r}); it must be {expected}"
        elif isinstance(exc, (EOFError, zipfile.BadZipFile)) or any(
                s in text for s in ("central directory", "EOF", "truncated", "corrupted", "failed reading")):
            reason = (f"it is truncated or damaged (an interrupted download or copy?): download or copy it again. "
                      f"It must be {expected}")
        elif is_zip and "data.pkl" in text:
            reason = f"it is a zip archive but not a PyTorch checkpoint (no data.pkl inside); it must be {expected}"
        elif isinstance(exc, pickle.UnpicklingError) and is_pickle:
            reason = f"it is a pickle but not a PyTorch checkpoint that lvseg can read safely; it must be {expected}"
        else:
            reason = f"it is not a readable PyTorch checkpoint ({type(exc).__name__}); it must be {expected}"
        raise CheckpointError(f"cannot load {path}: {reason}") from exc
