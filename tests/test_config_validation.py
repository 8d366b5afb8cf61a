"""Every field of a config.json is checked when it is read: missing, wrong type, out of range, unknown, nested.

Before: a config.json without ``hidden_dim`` silently built a 256-wide model (then "shape mismatches (229)"), and
``hidden_dim: "sixty-four"`` failed inside the model with "not all arguments converted during string formatting".
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from lvseg.errors import ConfigError
from lvseg.hub import from_pretrained
from lvseg.models.mttr.config import MTTRConfig
from lvseg.models.referformer.config import ReferFormerConfig

BUNDLED = Path(__file__).resolve().parents[1] / "lvseg" / "assets" / "referformer-tiny-shapes"


def bundled_config() -> dict:
    return json.loads((BUNDLED / "config.json").read_text())


def edited(change) -> dict:
    config = copy.deepcopy(bundled_config())
    change(config)
    return config


CASES = [
    # (what, edit, the message must contain)
    ("missing", lambda c: c.pop("hidden_dim"), "lacks the required field(s) ['hidden_dim'] of ReferFormerConfig"),
    ("wrong type", lambda c: c.update(hidden_dim="sixty-four"),
     "config field 'hidden_dim' must be an integer, got 'sixty-four' (str)"),
    ("bool for int", lambda c: c.update(enc_layers=True), "config field 'enc_layers' must be an integer, got True"),
    ("float for int", lambda c: c.update(num_queries=1.5), "config field 'num_queries' must be an integer, got 1.5"),
    ("string for bool", lambda c: c.update(rel_coord="yes"), "config field 'rel_coord' must be true or false"),
    ("out of range", lambda c: c.update(num_queries=0), "config field 'num_queries' of ReferFormerConfig must be >= 1"),
    ("out of range float", lambda c: c.update(dropout=1.5), "'dropout' of ReferFormerConfig must be between 0 and 1"),
    ("not finite", lambda c: c.update(dropout=float("nan")), "config field 'dropout' must be a number"),
    ("unknown field", lambda c: c.update(hiden_dim=64), "unknown config field(s) ['hiden_dim'] for ReferFormerConfig"),
    ("nested missing", lambda c: c["preprocessing"].pop("short_side"),
     "lacks the required field(s) ['short_side'] of PreprocessConfig in 'preprocessing'"),
    ("nested wrong type", lambda c: c["preprocessing"].update(window="abc"),
     "config field 'preprocessing.window' must be an integer, got 'abc'"),
    ("nested range", lambda c: c["preprocessing"].update(overlap=-2),
     "in 'preprocessing': config field 'overlap' of PreprocessConfig must be >= 0, got -2"),
    ("nested length", lambda c: c["preprocessing"].update(mean=[0.5, 0.5]),
     "config field 'preprocessing.mean' must be a list of 3 numbers, got 2 values"),
    ("nested unknown", lambda c: c["preprocessing"].update(windw=4),
     "unknown config field(s) ['windw'] for PreprocessConfig in 'preprocessing'"),
    ("nested object", lambda c: c.update(preprocessing=[1, 2]), "config field 'preprocessing' must be an object"),
    ("text encoder size missing", lambda c: c["text_encoder"].pop("vocab_size"),
     "config field 'text_encoder' lacks the required size(s) ['vocab_size']"),
    ("text encoder wrong type", lambda c: c["text_encoder"].update(hidden_size="64"),
     "config field 'text_encoder.hidden_size' must be an integer >= 1, got '64'"),
    ("swin element", lambda c: c.update(backbone="swin", timm_model="", temporal_kernel=0, swin={
        "embed_dim": 32, "depths": [2, "two"], "num_heads": [1, 2], "window": [1, 7, 7], "drop_path_rate": 0.1}),
     "config field 'swin.depths[1]' must be an integer, got 'two'"),
    ("swin missing", lambda c: c.update(backbone="swin", timm_model="", temporal_kernel=0, swin={
        "embed_dim": 32, "depths": [2, 2], "num_heads": [1, 2], "window": [1, 7, 7]}),
     "lacks the required field(s) ['drop_path_rate'] of SwinConfig in 'swin'"),
    ("swin range", lambda c: c.update(backbone="swin", timm_model="", temporal_kernel=0, swin={
        "embed_dim": 0, "depths": [2, 2], "num_heads": [1, 2], "window": [1, 7, 7], "drop_path_rate": 0.1}),
     "in 'swin': config field 'embed_dim' of SwinConfig must be >= 1, got 0"),
]


@pytest.mark.parametrize("what, change, message", CASES, ids=[c[0] for c in CASES])
def test_bad_referformer_config_values_are_named(what, change, message):
    with pytest.raises(ConfigError) as info:
        ReferFormerConfig.from_dict(edited(change))
    assert message in str(info.value), str(info.value)


def test_a_bad_config_json_names_the_file_and_the_field(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(BUNDLED, folder)
    (folder / "config.json").write_text(json.dumps(edited(lambda c: c.pop("hidden_dim"))))
    with pytest.raises(ConfigError, match=r"config\.json: config lacks the required field\(s\) \['hidden_dim'\]"):
        from_pretrained(folder, device="cpu")
    (folder / "config.json").write_text(json.dumps(edited(lambda c: c.update(hidden_dim="sixty-four"))))
    with pytest.raises(ConfigError, match="'hidden_dim' must be an integer, got 'sixty-four'"):
        from_pretrained(folder, device="cpu")
    (folder / "config.json").write_text(json.dumps(edited(lambda c: c.update(architecture=["referformer"]))))
    with pytest.raises(ConfigError, match="'architecture' must be a string"):  # before: TypeError (unhashable)
        from_pretrained(folder, device="cpu")


def test_fields_that_may_be_absent_take_the_official_default():
    """Only ReferFormerConfig.optional_fields may be absent; their defaults are the official behaviour."""
    config = edited(lambda c: [c.pop(k) for k in ("fused_attention", "gradient_checkpointing", "sentence_pooling",
                                                  "query_reference", "mask_refine", "swin")])
    loaded = ReferFormerConfig.from_dict(config)
    assert (loaded.fused_attention, loaded.sentence_pooling, loaded.query_reference, loaded.mask_refine) == (
        False, "pooler", "learned", 0)
    required = [f for f in bundled_config() if f not in ReferFormerConfig.optional_fields and f != "lvseg_version"]
    for field in required:
        with pytest.raises(ConfigError, match=f"lacks the required field\\(s\\) \\['{field}'\\]"):
            ReferFormerConfig.from_dict(edited(lambda c: c.pop(field)))


def test_bad_mttr_config_values_are_named():
    good = json.loads(MTTRConfig().to_json_string())
    assert MTTRConfig.from_dict(good) == MTTRConfig()
    cases = [
        (lambda c: c.pop("d_model"), "lacks the required field(s) ['d_model'] of MTTRConfig"),
        (lambda c: c.update(num_queries="50"), "config field 'num_queries' must be an integer, got '50'"),
        (lambda c: c.update(swin_window=[8, 7]), "config field 'swin_window' must be a list of 3 integers, got 2"),
        (lambda c: c.update(num_encoder_layers=0), "'num_encoder_layers' of MTTRConfig must be >= 1, got 0"),
        (lambda c: c.update(drop_path_rate=-0.1), "'drop_path_rate' of MTTRConfig must be between 0 and 1"),
        (lambda c: c.update(protocl="ytvos"), "unknown config field(s) ['protocl'] for MTTRConfig"),
        (lambda c: c["text_encoder"].update(hidden_dropout_prob=3), "'text_encoder.hidden_dropout_prob' must be a "
                                                                     "number between 0 and 1, got 3"),
    ]
    for change, message in cases:
        config = copy.deepcopy(good)
        change(config)
        with pytest.raises(ConfigError) as info:
            MTTRConfig.from_dict(config)
        assert message in str(info.value), str(info.value)
    # runtime switches may be absent
    config = copy.deepcopy(good)
    del config["fused_attention"], config["freeze_text_encoder"]
    assert MTTRConfig.from_dict(config) == MTTRConfig()


def test_configs_built_in_code_are_checked_and_complete():
    with pytest.raises(ConfigError, match="'nheads' of ReferFormerConfig must be >= 1, got 0"):
        ReferFormerConfig(nheads=0)
    # a text encoder given in part in code gets RobertaConfig's defaults written out, so its config.json is complete
    config = ReferFormerConfig(text_encoder={"vocab_size": 400, "hidden_size": 64, "num_hidden_layers": 1,
                                             "num_attention_heads": 2, "intermediate_size": 32})
    again = ReferFormerConfig.from_dict(json.loads(config.to_json_string()))
    assert again == config and again.text_encoder["max_position_embeddings"] == 512
