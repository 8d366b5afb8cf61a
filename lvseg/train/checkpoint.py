"""Training checkpoints: written atomically (temp file + rename), the last K kept, full resume state.

A checkpoint file ``<output_dir>/checkpoints/step_<N>.pt`` holds the model and optimizer, scheduler and grad-scaler
states, every random generator (torch CPU/CUDA, Python, NumPy), the position in the data order (epoch and batch)
and the run's bookkeeping (best metric, history). Files are only ever replaced by ``os.replace`` of a fully written
and fsync'ed temporary file, and older checkpoints are deleted only after the new one is in place, so a process
killed while writing never damages the previous checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..utils import atomic_path, torch_load

__all__ = [
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
    "list_checkpoints",
    "load_latest_checkpoint",
    "replace_folder",
]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Every random generator a training step may draw from."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints in ``directory``, oldest first (temporary files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write ``state`` as ``step_<step>.pt`` atomically, then delete all but the newest ``keep_last``."""
    directory = Path(directory)
    path = directory / f"step_{step:08d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(directory)[: -max(keep_last, 1)]:
        old.unlink(missing_ok=True)
    logger.info("saved checkpoint %s", path)
    return path


def load_latest_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads, or None when there is none. A damaged file is skipped with a warning."""
    problems = []
    for step, path in reversed(list_checkpoints(directory)):
        try:
            # weights_only=False: the file is one lvseg wrote (optimizer and RNG states are not plain tensors)
            state = torch_load(path, expected="an lvseg training checkpoint", weights_only=False)
        except CheckpointError as exc:  # a file damaged by something other than us (disk full, copied partially)
            logger.warning("%s; trying an older checkpoint", exc)
            problems.append(str(exc))
            continue
        if not isinstance(state, dict) or "model" not in state or state.get("step") != step:
            logger.warning("checkpoint %s is not an lvseg training checkpoint; skipped", path)
            problems.append(f"{path} is not an lvseg training checkpoint")
            continue
        logger.info("resuming from %s (step %d)", path, step)
        return state
    if list_checkpoints(directory):
        raise CheckpointError(
            f"no checkpoint in {directory} loads ({'; '.join(problems)}); delete the damaged "
            "files (or the folder, to start over)"
        )
    return None


def replace_folder(src: Path, dst: Path) -> None:
    """Move the fully written folder ``src`` to ``dst``, replacing ``dst`` (never leaves ``dst`` half-written)."""
    old = dst.with_name(dst.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
