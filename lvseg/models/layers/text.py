"""Text encoders built from a configuration alone (no download); weights come from our checkpoints."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, TokenizerError

__all__ = ["ROBERTA_BASE_CONFIG", "PROBE_SENTENCE", "build_roberta", "tokenizer_problems", "check_tokenizer"]

# transformers.RobertaConfig arguments of Hub "roberta-base" (the architecture ReferFormer and MTTR use)
ROBERTA_BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def build_roberta(config: dict[str, Any], add_pooling_layer: bool = True) -> Any:
    """A randomly initialised ``transformers.RobertaModel`` from RobertaConfig keyword arguments.

    Raises :class:`~lvseg.errors.ConfigError` when the arguments are not a valid RobertaConfig.
    """
    from transformers import RobertaConfig, RobertaModel

    try:
        cfg = RobertaConfig(**config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid text encoder config {config}: {exc}") from exc
    return RobertaModel(cfg, add_pooling_layer=add_pooling_layer)


# A plain English sentence that every tokenizer of these text encoders must encode into real tokens and decode back.
PROBE_SENTENCE = "the man riding a bike on the street"
# RoBERTa's vocabulary (fairseq's dictionary order): <unk> has no RobertaConfig field, the others do.
_UNK_ID = 3


def tokenizer_problems(tokenizer: Any, text_config: dict[str, Any]) -> list[str]:
    """What makes ``tokenizer`` unfit for the text encoder that ``text_config`` (RobertaConfig arguments) builds.

    A tokenizer fits when its vocabulary has exactly the embedding's ``vocab_size`` rows (not checked when
    ``text_config`` has no ``vocab_size``, e.g. before a checkpoint is read), ``<s>``, ``<pad>``,
    ``</s>`` and ``<unk>`` have the config's ``bos_token_id``, ``pad_token_id``, ``eos_token_id`` and 3
    (roberta-base: 0, 1, 2, 3), and :data:`PROBE_SENTENCE` encodes to ``<s> ... </s>`` with real tokens, no
    ``<unk>``, ids inside the embedding, and decodes back. transformers 5 builds an empty 5-token tokenizer from
    a folder without tokenizer files instead of raising; this is what catches it.

    Returns:
        one line per problem; empty when the tokenizer fits.
    """
    vocab_size = text_config.get("vocab_size")
    specials = {
        "<s>": int(text_config.get("bos_token_id", ROBERTA_BASE_CONFIG["bos_token_id"])),
        "<pad>": int(text_config.get("pad_token_id", ROBERTA_BASE_CONFIG["pad_token_id"])),
        "</s>": int(text_config.get("eos_token_id", ROBERTA_BASE_CONFIG["eos_token_id"])),
        "<unk>": _UNK_ID,
    }
    problems: list[str] = []
    try:
        size = len(tokenizer)
        if vocab_size is not None and size != vocab_size:
            problems.append(f"it has {size} tokens but the text encoder's embedding has {vocab_size} rows")
        ids = tokenizer.convert_tokens_to_ids(list(specials))
        wrong = [f"{token}={got} (expected {want})" for (token, want), got in zip(specials.items(), ids) if got != want]
        if wrong:
            problems.append("special tokens at other ids: " + ", ".join(wrong))
        if tokenizer.pad_token_id != specials["<pad>"]:
            problems.append(f"it pads with id {tokenizer.pad_token_id}, not {specials['<pad>']}")
        encoded = list(tokenizer(PROBE_SENTENCE)["input_ids"])
        decoded = tokenizer.decode(encoded, skip_special_tokens=True).strip()
    except Exception as exc:  # any failure here means the object is not a working tokenizer
        return problems + [f"it cannot encode text ({type(exc).__name__}: {exc})"]
    wrapped = len(encoded) >= 2 and encoded[0] == specials["<s>"] and encoded[-1] == specials["</s>"]
    body = encoded[1:-1] if wrapped else encoded
    words = [i for i in body if i not in specials.values()]
    if not wrapped:
        problems.append(f"{PROBE_SENTENCE!r} is not wrapped in <s> ... </s> ({encoded})")
    if not words:
        problems.append(f"{PROBE_SENTENCE!r} encodes to special tokens only ({encoded})")
    elif specials["<unk>"] in body:
        problems.append(f"plain English words become <unk> in {PROBE_SENTENCE!r} ({encoded})")
    rows = size if vocab_size is None else vocab_size
    outside = sorted({i for i in encoded if not 0 <= i < rows})
    if outside:
        problems.append(f"ids {outside} are outside the vocabulary's {rows} rows")
    if words and decoded != PROBE_SENTENCE:
        problems.append(f"{PROBE_SENTENCE!r} decodes back as {decoded!r}")
    return problems


def check_tokenizer(tokenizer: Any, text_config: dict[str, Any], *, source: str, fix: str) -> None:
    """Raise :class:`~lvseg.errors.TokenizerError` unless ``tokenizer`` fits the text encoder of ``text_config``
    (see :func:`tokenizer_problems`); the message names ``source`` (where the tokenizer came from) and ``fix``."""
    problems = tokenizer_problems(tokenizer, text_config)
    if problems:
        raise TokenizerError(
            f"the tokenizer from {source} is not the one this model's text encoder needs (a model with it would "
            f"ignore or misread its text): {'; '.join(problems)}. {fix}"
        )
