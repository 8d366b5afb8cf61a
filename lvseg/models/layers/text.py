"""Text encoders built from a configuration alone (no download); weights come from our checkpoints."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError

__all__ = ["ROBERTA_BASE_CONFIG", "build_roberta"]

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
