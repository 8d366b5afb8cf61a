"""Small helpers used across lvseg: atomic writes of files and folders that honour the umask.

Every file and folder lvseg writes is first created under a temporary name beside its destination and renamed
onto it when complete, so an interrupted write never leaves a half-written file or a folder that mixes two results.
``tempfile.mkstemp``/``mkdtemp`` create their files with mode 0600 / 0700 whatever the umask; the helpers here give
them the mode an ordinary ``open``/``mkdir`` would (``0666``/``0777`` minus the umask) before they are renamed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError

__all__ = [
    "atomic_path",
    "atomic_write_text",
    "atomic_folder",
    "check_output_folder",
    "current_umask",
    "ensure_folder",
    "make_temp_folder",
    "torch_load",
]


def current_umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where available, else by setting and restoring it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no other way to read it; restored at once
    os.umask(mask)
    return mask


def _output_error(path: Path, exc: OSError, what: str = "write") -> OutputError:
    """An :class:`OutputError` that names ``path``, the system's reason and the fix."""
    reason = exc.strerror or type(exc).__name__
    parent = next((p for p in [path, *path.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        hint = f"{parent} is a file, not a folder: choose another path"
    elif isinstance(exc, PermissionError) or (parent is not None and not os.access(parent, os.W_OK)):
        hint = f"{parent} is not writable: make it writable (chmod u+w) or choose another path"
    else:
        hint = "choose a path on a writable disk"
    return OutputError(f"cannot {what} {path} ({reason}); {hint}")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(path, exc, "create the folder for") from exc


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    A crash while writing leaves the previous ``path`` (if any) untouched, never a half-written file. The file gets
    the mode ``open()`` would give it (``0666`` minus the umask). A destination that cannot be written (a read-only
    folder, a path under a file, ``/proc``) raises :class:`~lvseg.errors.OutputError` before anything is written.
    """
    path = Path(path)
    _make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _output_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after the writer: some (safetensors) create the file anew with mode 0600
        os.chmod(tmp_path, 0o666 & ~current_umask())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, path)
        except IsADirectoryError as exc:
            raise OutputError(f"cannot write {path}: it is a folder; choose a file name") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def make_temp_folder(beside: str | Path) -> Path:
    """Create an empty hidden folder next to ``beside`` (same file system, so it can be renamed onto it).

    Its mode is what ``mkdir`` would give (``0777`` minus the umask), not ``mkdtemp``'s 0700. Raises
    :class:`~lvseg.errors.OutputError` when the parent cannot be written.
    """
    beside = Path(beside)
    _make_parent(beside)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent))
    except OSError as exc:
        raise _output_error(beside, exc) from exc
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def ensure_folder(path: str | Path) -> Path:
    """Create the folder ``path`` (and its parents) if needed and check that files can be created in it.

    Raises :class:`~lvseg.errors.OutputError` naming the path and the fix for an existing file, a path under a file,
    a read-only folder or a folder where nothing can be created (e.g. under ``/proc``), before any work is done.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is an existing file, not a folder: choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".lvseg-write-test.", dir=path)
    except OSError as exc:
        raise _output_error(path, exc) from exc
    os.close(fd)
    os.unlink(probe)
    return path


def check_output_folder(path: str | Path, *, overwrite: bool, option: str = "overwrite=True") -> bool:
    """Check that ``path`` can become a folder holding one new result; return whether it exists and is non-empty.

    Raises :class:`~lvseg.errors.OutputError` when ``path`` is an existing file, a read-only folder, or a non-empty
    folder and ``overwrite`` is false (``option`` names how the caller asks for overwriting, for the message).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is an existing file, not a folder: choose a folder path (e.g. {path}_out)")
    if not path.exists():
        return False
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path} is not writable: make it writable (chmod u+w {path}) or choose another folder")
    try:
        used = any(path.iterdir())
    except OSError as exc:
        raise _output_error(path, exc, "list") from exc
    if used and not overwrite:
        raise OutputError(
            f"{path} already holds files; choose a new or empty folder, or pass {option} to replace the folder "
            "and everything in it with the new result"
        )
    return used


@contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False, option: str = "overwrite=True") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` as a whole.

    So ``path`` always holds one complete result: the previous one (or nothing) until the new one is complete,
    then only the new one, never a mix of both (stale files of a longer earlier result do not survive). An
    exception or Ctrl-C while writing removes the temporary folder and leaves ``path`` as it was.

    ``path`` must be absent, empty, or (with ``overwrite``) a folder whose whole content may be replaced; see
    :func:`check_output_folder`, which runs first.
    """
    path = Path(path)
    check_output_folder(path, overwrite=overwrite, option=option)
    tmp = make_temp_folder(path)
    try:
        yield tmp
        _swap_in(tmp, path, overwrite=overwrite, option=option)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: Path, path: Path, *, overwrite: bool, option: str) -> None:
    """Rename the folder ``new`` onto ``path`` (absent, empty or, with ``overwrite``, not), deleting the old content
    afterwards."""
    try:
        os.replace(new, path)  # absent or empty destination: one atomic rename
        return
    except OSError as exc:
        if not path.is_dir() or not any(path.iterdir()):
            raise _output_error(path, exc) from exc
        if not overwrite:  # files appeared in `path` while the result was written
            raise OutputError(
                f"{path} got files while lvseg wrote its result; pass {option} or choose a new folder"
            ) from exc
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, old / path.name)  # the old result moves aside in one step ...
    try:
        os.replace(new, path)  # ... and the new one takes its place in the next
    except BaseException:
        os.replace(old / path.name, path)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol >= 2 (torch.save's legacy format starts with one)


def torch_load(
    path: str | Path,
    *,
    expected: str,
    allowed_globals: Sequence[Any] = (),
    weights_only: bool = True,
    mmap: bool = False,
) -> Any:
    """``torch.load(path, map_location="cpu")`` that fails with a :class:`~lvseg.errors.CheckpointError` naming
    the file and what is wrong with it: empty, not a PyTorch file, truncated or damaged, or holding objects outside
    the allow-list. PyTorch's own text (and its advice to retry with ``weights_only=False``, which would run
    pickled code) never reaches the user; the original exception stays chained for debugging.

    Args:
        path: the file to read.
        expected: what the file should be, for the message (e.g. "an official ReferFormer .pth checkpoint").
        allowed_globals: the non-tensor classes the file may hold (``torch.serialization.safe_globals``).
        weights_only: ``False`` only for files lvseg wrote itself (training checkpoints).
        mmap: memory-map the tensors (read when touched) where the file allows it (the zip format of
            ``torch.save`` since PyTorch 1.6; the legacy format is read whole).
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
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap and is_zip)
    except MemoryError:
        raise
    except Exception as exc:  # torch.load raises RuntimeError, UnpicklingError, EOFError, KeyError, ... by case
        text = str(exc)
        blocked = re.search(r"GLOBAL ([\w.]+)", text)
        if blocked and weights_only:
            reason = (
                f"it holds an object of type {blocked.group(1)}, which is not among the types lvseg accepts "
                "in a checkpoint (tensors, numbers, strings, containers, argparse.Namespace): lvseg does not "
                "run code stored in a file. It must be " + expected
            )
        elif not (is_zip or is_pickle):
            reason = f"it is not a PyTorch checkpoint (it starts with bytes {head!r}); it must be {expected}"
        elif isinstance(exc, (EOFError, zipfile.BadZipFile)) or any(
            s in text for s in ("central directory", "EOF", "truncated", "corrupted", "failed reading")
        ):
            reason = (
                f"it is truncated or damaged (an interrupted download or copy?): download or copy it again. "
                f"It must be {expected}"
            )
        elif is_zip and "data.pkl" in text:
            reason = f"it is a zip archive but not a PyTorch checkpoint (no data.pkl inside); it must be {expected}"
        elif isinstance(exc, pickle.UnpicklingError) and is_pickle:
            reason = f"it is a pickle but not a PyTorch checkpoint that lvseg can read safely; it must be {expected}"
        else:
            reason = f"it is not a readable PyTorch checkpoint ({type(exc).__name__}); it must be {expected}"
        raise CheckpointError(f"cannot load {path}: {reason}") from exc
