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

__all__ = [
    "safe_globals",
    "read_official_checkpoint",
    "load_roberta_tokenizer",
    "load_bert_tokenizer",
    "BERT_TOKENIZER_FIX",
    "check_converted_tokenizer",
    "count_groups",
]


def safe_globals() -> list[Any]:
    """The only non-tensor objects an official checkpoint may hold: training args (``argparse.Namespace``),
    counters, and NumPy scalars (trainers save best metrics as ``np.float64``)."""
    allowed: list[Any] = [argparse.Namespace, collections.Counter]
    try:
        import numpy as np

        allowed += [np.dtype, np.float64, np.float32, np.int64]
        allowed += [
            getattr(np.dtypes, n)
            for n in ("Float64DType", "Float32DType", "Int64DType")
            if hasattr(np, "dtypes") and hasattr(np.dtypes, n)
        ]
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
    # PyTorch's advice to retry with weights_only=False, which would run code stored in the file. Memory-mapped:
    # tensors are read when touched, so the config (from shapes) and the tokenizer's size check come in seconds
    # even for a multi-GB file.
    return torch_load(path, expected=expected, allowed_globals=safe_globals(), mmap=True)


# How to get a tokenizer the converters accept, for their error messages.
TOKENIZER_FIX = (
    "Pass --tokenizer DIR (tokenizer=DIR in Python): a folder with roberta-base's tokenizer files (vocab.json and "
    "merges.txt, or tokenizer.json). On a machine with network, get them with `hf download roberta-base vocab.json "
    "merges.txt tokenizer.json tokenizer_config.json --local-dir DIR` (huggingface_hub's CLI; older versions call "
    "it huggingface-cli), or convert once online without --tokenizer so that roberta-base lands in the Hugging "
    "Face cache (HF_HOME)."
)


def load_roberta_tokenizer(tokenizer: Any) -> Any:
    """A folder with RoBERTa tokenizer files, a ready ``transformers`` tokenizer, or ``None`` (fetch
    ``roberta-base``'s from the Hugging Face Hub or its cache) -> a checked tokenizer.

    Everything but the vocabulary size is checked here (special-token ids, a sentence round trip; see
    :func:`~lvseg.models.layers.text.tokenizer_problems`), so a converter fails in seconds, before it reads a
    checkpoint; the size is checked against the embedding by :func:`check_converted_tokenizer`.

    Raises:
        TokenizerError: the tokenizer cannot be loaded, or transformers built an empty one (which it does,
            without raising, for a folder without tokenizer files or when offline without a cached roberta-base).
    """
    from ..errors import TokenizerError
    from .layers.text import check_tokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        check_tokenizer(tokenizer, {}, source=_tokenizer_source(tokenizer), fix=TOKENIZER_FIX)
        return tokenizer
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise TokenizerError(f"tokenizer folder {str(tokenizer)!r} does not exist. {TOKENIZER_FIX}")
    from transformers import RobertaTokenizerFast

    where = _tokenizer_source(tokenizer)
    try:
        loaded = RobertaTokenizerFast.from_pretrained(str(tokenizer) if tokenizer is not None else "roberta-base")
    except Exception as exc:  # OSError, ValueError, and the Rust `tokenizers`' plain Exception for a bad file
        raise TokenizerError(f"cannot load the RoBERTa tokenizer from {where} ({exc}). {TOKENIZER_FIX}") from exc
    check_tokenizer(loaded, {}, source=where, fix=TOKENIZER_FIX)
    return loaded


BERT_TOKENIZER_FIX = (
    "Pass --tokenizer DIR (tokenizer=DIR in Python): a folder with bert-base-uncased's WordPiece tokenizer files "
    "(vocab.txt, or tokenizer.json). On a machine with network, get them with `hf download bert-base-uncased "
    "vocab.txt tokenizer.json tokenizer_config.json --local-dir DIR`, or convert once online without --tokenizer "
    "so that bert-base-uncased lands in the Hugging Face cache (HF_HOME)."
)


def load_bert_tokenizer(tokenizer: Any) -> Any:
    """:func:`load_roberta_tokenizer` for BERT text encoders (LAVT): a folder with WordPiece files, a ready
    ``transformers`` tokenizer, or ``None`` (``bert-base-uncased`` from the Hub or its cache) -> a checked
    lower-casing ``BertTokenizer`` (special-token ids and a sentence round trip; the vocabulary size is
    checked later against the embedding by :func:`check_converted_tokenizer`)."""
    from ..errors import TokenizerError
    from .layers.text import BERT_BASE_CONFIG, check_tokenizer

    probe = {"model_type": "bert", "pad_token_id": BERT_BASE_CONFIG["pad_token_id"]}
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        check_tokenizer(
            tokenizer, probe, source=_tokenizer_source(tokenizer, "bert-base-uncased"), fix=BERT_TOKENIZER_FIX
        )
        return tokenizer
    if tokenizer is not None and not Path(tokenizer).is_dir():
        raise TokenizerError(f"tokenizer folder {str(tokenizer)!r} does not exist. {BERT_TOKENIZER_FIX}")
    from transformers import BertTokenizer

    where = _tokenizer_source(tokenizer, "bert-base-uncased")
    try:
        loaded = BertTokenizer.from_pretrained(
            str(tokenizer) if tokenizer is not None else "bert-base-uncased", do_lower_case=True
        )
    except Exception as exc:  # OSError, ValueError, and the Rust `tokenizers`' plain Exception for a bad file
        raise TokenizerError(f"cannot load the BERT tokenizer from {where} ({exc}). {BERT_TOKENIZER_FIX}") from exc
    check_tokenizer(loaded, probe, source=where, fix=BERT_TOKENIZER_FIX)
    return loaded


def _tokenizer_source(tokenizer: Any, default: str = "roberta-base") -> str:
    """The converter's ``tokenizer`` argument, as error messages name it."""
    if tokenizer is None:
        return f"{default} (Hugging Face Hub or cache)"
    if isinstance(tokenizer, (str, Path)):
        return f"--tokenizer {tokenizer}"
    return "the tokenizer object passed"


def check_converted_tokenizer(tokenizer: Any, text_config: dict[str, Any], argument: Any) -> None:
    """Check a tokenizer from :func:`load_roberta_tokenizer` against the converted text encoder (its embedding
    rows, ``text_config["vocab_size"]``, and special-token ids), before the model is built.

    Args:
        argument: the converter's ``tokenizer`` argument the tokenizer came from (named in the error).
    """
    from .layers.text import check_tokenizer, is_bert

    bert = is_bert(text_config)
    check_tokenizer(
        tokenizer,
        text_config,
        source=_tokenizer_source(argument, "bert-base-uncased" if bert else "roberta-base"),
        fix=BERT_TOKENIZER_FIX if bert else TOKENIZER_FIX,
    )


def count_groups(state: dict[str, torch.Tensor], pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over the keys (e.g. blocks in a stage)."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})
