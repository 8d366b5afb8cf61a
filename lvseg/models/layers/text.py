"""Text encoders built from a configuration alone (no download); weights come from our checkpoints."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError

__all__ = ["ROBERTA_BASE_CONFIG", "build_roberta", "check_text_encoder", "complete_text_encoder"]

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


# RobertaConfig arguments that set weight shapes: required in a config (RobertaConfig would silently default them)
_TEXT_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "type_vocab_size")


def check_text_encoder(config: Any, where: str = "text_encoder", *, require_sizes: bool = False) -> None:
    """Check the RobertaConfig arguments of a model config: sizes positive integers, dropouts in [0, 1], token
    ids >= 0; with ``require_sizes`` (a config.json being read) every size must be present. Raises
    :class:`~lvseg.errors.ConfigError` naming the field."""
    if not isinstance(config, dict):
        raise ConfigError(f"config field {where!r} must be an object of RobertaConfig arguments, got {config!r}")
    missing = [k for k in _TEXT_SIZES if k not in config]
    if missing and require_sizes:
        raise ConfigError(f"config field {where!r} lacks the required size(s) {missing}: use the config.json written "
                          "with the weights, or re-convert the official checkpoint")
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
        elif key == "hidden_act" and not isinstance(value, str):
            raise ConfigError(f"config field '{where}.hidden_act' must be a string such as 'gelu', got {value!r}")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ConfigError(f"config field '{where}.hidden_size' ({config['hidden_size']}) must be a multiple of "
                          f"num_attention_heads ({config['num_attention_heads']})")


def complete_text_encoder(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every size RobertaConfig would default filled in explicitly (a config built in code may
    give only some), so that the config.json written with the weights is complete."""
    missing = [k for k in _TEXT_SIZES if k not in config]
    if not missing:
        return config
    from transformers import RobertaConfig

    defaults = RobertaConfig()
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
