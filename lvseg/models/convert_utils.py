"""Helpers shared by the families' checkpoint converters: safe reading of official ``.pth`` files, the RoBERTa
tokenizer that travels with converted models, and key counting."""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

__all__ = ["safe_globals", "read_official_checkpoint", "load_roberta_tokenizer", "count_groups"]


def safe_globals() -> list[Any]:
    """The only non-tensor objects an official checkpoint may hold: training args (``argparse.Namespace``),
    counters, and NumPy scalars (trainers save best metrics as ``np.float64``)."""
    allowed: list[Any] = [argparse.Namespace, collections.Counter]
    try:
        import numpy as np

        allowed += [np.dtype, np.float64, np.float32, np.int64]
        allowed += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType")
                    if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
        core = getattr(np, "_core", None) or np.core
        allowed.append(core.multiarray.scalar)
    except (ImportError, AttributeError):  # pragma: no cover - numpy is always installed with lvseg
        pass
    return allowed


def read_official_checkpoint(path: str | Path, expected: str) -> Any:
    """``torch.load`` an official checkpoint without executing pickled code (``weights_only=True`` with the
    :func:`safe_globals` allow-list).

    Args:
        path: the ``.pth`` file.
        expected: what the file should be, for the error message (e.g. "an official ReferFormer .pth").
    """
    from ..utils import torch_load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    # torch_load names what is wrong (not a checkpoint, truncated, a type outside the allow-list) without
    # PyTorch's advice to retry with weights_only=False, which would run code stored in the file
    return torch_load(path, expected=expected, allowed_globals=safe_globals())


def load_roberta_tokenizer(tokenizer: Any) -> Any:
    """A folder with RoBERTa tokenizer files, a ready ``transformers`` tokenizer, or ``None`` (fetch
    ``roberta-base``'s from the Hugging Face Hub) -> a tokenizer."""
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    from transformers import RobertaTokenizerFast

    source = str(tokenizer) if tokenizer is not None else "roberta-base"
    try:
        return RobertaTokenizerFast.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load the RoBERTa tokenizer from {source!r} ({exc}); pass --tokenizer DIR with "
            "roberta-base's tokenizer files (vocab.json, merges.txt) when offline"
        ) from exc


def count_groups(state: dict[str, torch.Tensor], pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over the keys (e.g. blocks in a stage)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})
