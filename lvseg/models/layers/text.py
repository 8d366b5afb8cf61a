"""Text encoders built from a configuration alone (no download); weights come from our checkpoints."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, TokenizerError

__all__ = [
    "ROBERTA_BASE_CONFIG",
    "BERT_BASE_CONFIG",
    "build_bert",
    "bert_token_ids",
    "bert_last_hidden_state",
    "is_bert",
    "PROBE_SENTENCE",
    "build_roberta",
    "check_text_encoder",
    "complete_text_encoder",
    "tokenizer_problems",
    "check_tokenizer",
]

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


# transformers.BertConfig arguments of Hub "bert-base-uncased" (LAVT's text encoder). ``model_type`` marks the
# config as BERT for the tokenizer checks (WordPiece [CLS]/[SEP]/[PAD]/[UNK] instead of RoBERTa's <s>...).
BERT_BASE_CONFIG: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}


def is_bert(config: dict[str, Any]) -> bool:
    """Whether a text-encoder config dict describes BERT (``model_type == "bert"``) rather than RoBERTa."""
    return config.get("model_type") == "bert"


# RobertaConfig arguments that set weight shapes: required in a config (RobertaConfig would silently default them)
_TEXT_SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


def check_text_encoder(config: Any, where: str = "text_encoder", *, require_sizes: bool = False) -> None:
    """Check the RobertaConfig arguments of a model config: sizes positive integers, dropouts in [0, 1], token
    ids >= 0; with ``require_sizes`` (a config.json being read) every size must be present. Raises
    :class:`~lvseg.errors.ConfigError` naming the field."""
    if not isinstance(config, dict):
        raise ConfigError(f"config field {where!r} must be an object of RobertaConfig arguments, got {config!r}")
    missing = [k for k in _TEXT_SIZES if k not in config]
    if missing and require_sizes:
        raise ConfigError(
            f"config field {where!r} lacks the required size(s) {missing}: use the config.json written "
            "with the weights, or re-convert the official checkpoint"
        )
    if missing:
        return
    for key, value in config.items():
        if key in _TEXT_SIZES or key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            low = 0 if key.endswith("_token_id") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"config field '{where}.{key}' must be an integer >= {low}, got {value!r}")
        elif key.endswith("_prob"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"config field '{where}.{key}' must be a number between 0 and 1, got {value!r}")
        elif key in ("layer_norm_eps", "initializer_range"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"config field '{where}.{key}' must be a number > 0, got {value!r}")
        elif key == "model_type" and value not in ("bert", "roberta"):
            raise ConfigError(f"config field '{where}.model_type' must be 'bert' or 'roberta', got {value!r}")
        elif key == "hidden_act" and not isinstance(value, str):
            raise ConfigError(f"config field '{where}.hidden_act' must be a string such as 'gelu', got {value!r}")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ConfigError(
            f"config field '{where}.hidden_size' ({config['hidden_size']}) must be a multiple of "
            f"num_attention_heads ({config['num_attention_heads']})"
        )


def complete_text_encoder(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every size RobertaConfig would default filled in explicitly (a config built in code may
    give only some), so that the config.json written with the weights is complete."""
    missing = [k for k in _TEXT_SIZES if k not in config]
    if not missing:
        return config
    from transformers import BertConfig, RobertaConfig

    defaults = BertConfig() if is_bert(config) else RobertaConfig()
    return {**config, **{k: getattr(defaults, k) for k in missing}}


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


def build_bert(config: dict[str, Any], attn_implementation: str = "eager") -> Any:
    """A randomly initialised ``transformers.BertModel`` without pooler from BertConfig keyword arguments.

    ``attn_implementation`` defaults to eager attention: with :func:`bert_last_hidden_state` it reproduces the
    transformers 3.0.2 BERT of the official LAVT code bit for bit (SDPA differs by rounding).

    Raises :class:`~lvseg.errors.ConfigError` when the arguments are not a valid BertConfig.
    """
    from transformers import BertConfig, BertModel

    try:
        kwargs: dict[str, Any] = {k: v for k, v in config.items() if k != "model_type"}
        kwargs["attn_implementation"] = attn_implementation
        cfg = BertConfig(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid text encoder config {config}: {exc}") from exc
    return BertModel(cfg, add_pooling_layer=False)


def bert_last_hidden_state(bert: Any, input_ids: Any, attention_mask: Any) -> Any:
    """BERT's last hidden state [B, N, D] computed as transformers 3.0.2 (vendored by LAVT) does.

    Current transformers sums the embeddings as ``(word + token_type) + position``; 3.0.2 as
    ``(word + position) + token_type``, and adds ``(1 - mask) * -10000`` to the attention logits. The float
    rounding of the first order, amplified by LAVT's instance norms, moves random-weight Swin-B logits by ~1e-3;
    this function uses the 3.0.2 order and mask with the model's own modules (and weights), so with eager
    attention the result is the official one bit for bit.

    Args:
        bert: a ``transformers.BertModel``.
        input_ids, attention_mask: int64 [B, N]; token type 0 everywhere (LAVT passes none).
    """
    import torch

    emb = bert.embeddings
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
    hidden = emb.word_embeddings(input_ids) + emb.position_embeddings(positions)
    hidden = hidden + emb.token_type_embeddings(torch.zeros_like(input_ids))
    hidden = emb.dropout(emb.LayerNorm(hidden))
    additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * -10000.0
    return bert.encoder(hidden, attention_mask=additive).last_hidden_state


def bert_token_ids(tokenizer: Any, texts: list[str], budget: int, pad_id: int = 0) -> tuple[Any, Any]:
    """LAVT's token budget: WordPiece ids with ``[CLS] ... [SEP]``, then cut to ``budget`` ids (so a long
    expression loses its ``[SEP]``), padded with ``pad_id`` to exactly ``budget``.

    Returns:
        ``(input_ids, attention_mask)``: int64 [B, budget] each; the mask is 1 on kept tokens.
    """
    import torch

    ids = torch.full((len(texts), budget), pad_id, dtype=torch.long)
    mask = torch.zeros((len(texts), budget), dtype=torch.long)
    for i, text in enumerate(texts):
        encoded = list(tokenizer(text, add_special_tokens=True)["input_ids"])[:budget]
        ids[i, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
        mask[i, : len(encoded)] = 1
    return ids, mask


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
    if is_bert(text_config):
        return _bert_tokenizer_problems(tokenizer, text_config)
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
        return [*problems, f"it cannot encode text ({type(exc).__name__}: {exc})"]
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


# bert-base-uncased's WordPiece vocabulary: [PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102
_BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102}


def _bert_tokenizer_problems(tokenizer: Any, text_config: dict[str, Any]) -> list[str]:
    """:func:`tokenizer_problems` for a BERT text encoder: the WordPiece specials at bert-base-uncased's ids
    (padding at the config's ``pad_token_id``), :data:`PROBE_SENTENCE` wrapped in ``[CLS] ... [SEP]`` with real
    tokens, no ``[UNK]``, ids inside the embedding, and decoded back (lower-cased)."""
    vocab_size = text_config.get("vocab_size")
    specials = dict(_BERT_SPECIALS, **{"[PAD]": int(text_config.get("pad_token_id", 0))})
    problems: list[str] = []
    try:
        size = len(tokenizer)
        if vocab_size is not None and size != vocab_size:
            problems.append(f"it has {size} tokens but the text encoder's embedding has {vocab_size} rows")
        ids = tokenizer.convert_tokens_to_ids(list(specials))
        wrong = [f"{token}={got} (expected {want})" for (token, want), got in zip(specials.items(), ids) if got != want]
        if wrong:
            problems.append("special tokens at other ids: " + ", ".join(wrong))
        if tokenizer.pad_token_id != specials["[PAD]"]:
            problems.append(f"it pads with id {tokenizer.pad_token_id}, not {specials['[PAD]']}")
        encoded = list(tokenizer(PROBE_SENTENCE)["input_ids"])
        decoded = tokenizer.decode(encoded, skip_special_tokens=True).strip()
    except Exception as exc:  # any failure here means the object is not a working tokenizer
        return [*problems, f"it cannot encode text ({type(exc).__name__}: {exc})"]
    wrapped = len(encoded) >= 2 and encoded[0] == specials["[CLS]"] and encoded[-1] == specials["[SEP]"]
    body = encoded[1:-1] if wrapped else encoded
    words = [i for i in body if i not in specials.values()]
    if not wrapped:
        problems.append(f"{PROBE_SENTENCE!r} is not wrapped in [CLS] ... [SEP] ({encoded})")
    if not words:
        problems.append(f"{PROBE_SENTENCE!r} encodes to special tokens only ({encoded})")
    elif specials["[UNK]"] in body:
        problems.append(f"plain English words become [UNK] in {PROBE_SENTENCE!r} ({encoded})")
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
