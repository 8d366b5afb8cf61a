"""LAVT image models against golden outputs of the official code (yz93/LAVT-RIS 1da0af9), through the official
file formats (``lavt``: model + bert_model; ``lavt_one``: BERT inside the model).

The fixtures (tests/fixtures/lavt/w7.*, w12.*) were produced by tests/fixtures/lavt/generate_golden.py: the
official classes with a reduced Swin (width 16, depths 2-2-2-2; same code paths), a 1-layer BERT of width 768,
deterministic weights (tests/fixtures/lavt/lavt_weights.py) and two expressions, one longer than the 20-token
budget. ``w7``: window 7, 100x92 input, PWAM heads 2-1-2-1; ``w12``: window 12, 196x228 input. At these sizes
every stage map is a non-multiple of the window (padding after norm1, padded tokens unmasked), the shifted
blocks use the -100 mask, and the last stages are smaller than the window (no shrinking in 2-D). Here the same
weights are written as official checkpoints, converted with lvseg's converter and run on the same inputs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lvseg.errors import CheckpointError, ConfigError, TokenizerError
from lvseg.models.lavt.convert import convert, convert_to_folder, load_official_checkpoint
from lvseg.models.lavt.model import LAVT, two_class_to_logit
from lvseg.models.layers.text import bert_token_ids

from parity import RELATIVE_TOLERANCE, assert_parity, parity_failures, swap_weights, threshold_margin_failures

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lavt"
sys.path.insert(0, str(FIXTURES))
from lavt_weights import fill_official_state, make_images, unpack_bits, write_vocab  # noqa: E402

CASES = ("w7", "w12")
META = {name: json.loads((FIXTURES / f"{name}.json").read_text()) for name in CASES}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bert-tokenizer")
    write_vocab(path)
    return path


def tokenizer(directory: Path):
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(directory), do_lower_case=True)


def official_window_index(window: int) -> torch.Tensor:
    """The official 2-D relative_position_index buffer, written out independently of lvseg's helper."""
    coords = [(h, w) for h in range(window) for w in range(window)]
    index = torch.empty(len(coords), len(coords), dtype=torch.long)
    for i, (h1, w1) in enumerate(coords):
        for j, (h2, w2) in enumerate(coords):
            index[i, j] = (h1 - h2 + window - 1) * (2 * window - 1) + (w1 - w2 + window - 1)
    return index


def official_states(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The fixture's official ``model`` and ``bert_model`` state dicts."""
    meta = META[name]
    model_keys = {k: tuple(v) for k, v in meta["official_model_keys"].items()}
    floats = {k: s for k, s in model_keys.items() if not k.endswith(("relative_position_index", "num_batches_tracked"))}
    floats.update({"text_encoder." + k: tuple(v) for k, v in meta["official_bert_keys"].items()})
    filled = fill_official_state(floats)
    index = official_window_index(meta["window"])
    model = {}
    for key in model_keys:  # official order
        if key.endswith("relative_position_index"):
            model[key] = index
        elif key.endswith("num_batches_tracked"):
            model[key] = torch.tensor(1000)
        else:
            model[key] = filled[key]
    bert = {k: filled["text_encoder." + k] for k in meta["official_bert_keys"]}
    return model, bert


def official_args(name: str, model: str) -> argparse.Namespace:
    meta = META[name]
    return argparse.Namespace(model=model, swin_type="base", window12=meta["window"] == 12, mha=meta["mha"],
                              ck_bert="bert-base-uncased", lr=5e-5, fusion_drop=0.0, img_size=480)


def write_checkpoint(name: str, layout: str, path: Path) -> Path:
    model, bert = official_states(name)
    common = {"optimizer": {"state": {}, "param_groups": []}, "epoch": 39, "lr_scheduler": {"last_epoch": 10}}
    if layout == "lavt":
        torch.save({"model": model, "bert_model": bert, "args": official_args(name, "lavt"), **common}, path)
    else:
        model.update({"text_encoder." + k: v for k, v in bert.items()})
        torch.save({"model": model, "args": official_args(name, "lavt_one"), **common}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("lavt")
    return {(n, lay): write_checkpoint(n, lay, root / f"{n}.{lay}.pth") for n in CASES for lay in ("lavt", "lavt_one")}


def build(path: Path, fused: bool, tokenizer_dir: Path | None = None) -> LAVT:
    state, config = convert(path, fused_attention=fused)
    model = LAVT(config, tokenizer=tokenizer(tokenizer_dir) if tokenizer_dir else None).eval()
    model.load_state_dict(state, strict=True)
    return model


def run(model: LAVT, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder logits [B, 2, H/4, W/4], final class logits [B, 2, H, W]) on the fixture's inputs."""
    meta = META[name]
    ids, mask = torch.tensor(meta["token_ids"]), torch.tensor(meta["attention_mask"])
    images = make_images(meta["seed"], len(meta["expressions"]), *meta["size"])
    captured = {}
    hook = model.classifier.register_forward_hook(lambda m, i, o: captured.__setitem__("decoder", o))
    with torch.no_grad():
        logits = model.forward_features(images, model.encode_text(ids, mask), mask)
    hook.remove()
    return captured["decoder"], logits


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("name", CASES)
def test_fixture_records_the_official_commit(name):
    with safe_open(str(FIXTURES / f"{name}.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["official_repo"] == "yz93/LAVT-RIS"
    assert meta["official_commit"].startswith("1da0af9") and META[name]["official_commit"] == meta["official_commit"]
    # the official lavt_one (BERT inside) gave bit-identical outputs to lavt (BERT outside) when generated
    assert META[name]["lavt_one_vs_lavt_max_abs"] == 0.0


@pytest.mark.parametrize("name", CASES)
def test_token_budget_matches_the_official_tokenization(name, tokenizer_dir):
    """WordPiece ids with [CLS]/[SEP], cut to 20 (the long expression loses [SEP]), padded with 0: the ids the
    official vendored BertTokenizer produced on the same vocabulary."""
    meta = META[name]
    ids, mask = bert_token_ids(tokenizer(tokenizer_dir), meta["expressions"], 20)
    assert ids.tolist() == meta["token_ids"] and mask.tolist() == meta["attention_mask"]
    assert ids[1, -1].item() != 102 and mask[1].all()  # truncated after the specials: no [SEP]
    assert 102 in ids[0].tolist() and not mask[0].all()


# -------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("name", CASES)
def test_outputs_match_the_official_code(checkpoints, name, fused):
    """Decoder logits within the relative tolerance, and the official argmax masks (bilinear align_corners
    upsampling to the input size) reproduced up to pixels that rounding within that tolerance can flip."""
    golden = load_file(str(FIXTURES / f"{name}.safetensors"))
    model = build(checkpoints[(name, "lavt")], fused)
    decoder, logits = run(model, name)
    assert_parity({"decoder_logits": decoder}, golden)
    h, w = META[name]["size"]
    expected = unpack_bits(golden["masks"], h, w)
    margin = RELATIVE_TOLERANCE * golden["decoder_logits"].abs().max().item() * 2  # logit_1 - logit_0
    diff = two_class_to_logit(logits)
    assert 0 < int(expected.sum()) < expected.numel()  # both classes occur
    assert threshold_margin_failures(lambda x: x > 0, diff, expected, margin) == 0


@pytest.mark.parametrize("name", CASES)
def test_lavt_and_lavt_one_files_convert_to_the_same_model(checkpoints, name):
    a, config_a = convert(checkpoints[(name, "lavt")])
    b, config_b = convert(checkpoints[(name, "lavt_one")])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (config_a.variant, config_b.variant) == ("lavt", "lavt_one")
    assert config_a.window == META[name]["window"] and config_a.embed_dim == 16
    assert config_a.depths == (2, 2, 2, 2) and config_a.num_heads == (1, 2, 2, 4)
    expected_heads = tuple(int(x) for x in META[name]["mha"].split("-")) if META[name]["mha"] else (1, 1, 1, 1)
    assert config_a.fusion_heads == expected_heads
    assert config_a.text_encoder["num_hidden_layers"] == 1 and config_a.text_encoder["hidden_size"] == 768


def test_a_swapped_weight_pair_fails_the_parity_check(checkpoints):
    golden = load_file(str(FIXTURES / "w7.safetensors"))
    state, config = convert(checkpoints[("w7", "lavt")], fused_attention=False)
    for a, b in [("gates.1.res_gate.0.weight", "gates.1.res_gate.2.weight"),
                 ("fusions.0.image_lang_att.f_query.0.weight", "fusions.0.image_lang_att.W.0.weight")]:
        net = LAVT(config).eval()
        net.load_state_dict(swap_weights(state, a, b), strict=True)
        decoder, _ = run(net, "w7")
        assert parity_failures({"decoder_logits": decoder}, golden), f"swapping {a} and {b} went unnoticed"


def test_the_last_stage_gate_is_unused_and_the_decoder_reads_the_pwam_output(checkpoints):
    """Official quirks: the stage-4 gate never reaches the output; the decoder reads LayerNorm(PWAM output),
    so changing a gate of stages 1-3 changes the output only through the later stages."""
    state, config = convert(checkpoints[("w7", "lavt")], fused_attention=False)
    net = LAVT(config).eval()
    net.load_state_dict(state, strict=True)
    base = run(net, "w7")[0]
    with torch.no_grad():
        net.gates[3].res_gate[0].weight.mul_(-3.0)
    assert torch.equal(run(net, "w7")[0], base)
    with torch.no_grad():
        net.gates[2].res_gate[0].weight.mul_(-3.0)
    assert not torch.allclose(run(net, "w7")[0], base)


# ----------------------------------------------------------------------------------------------- end to end
def test_convert_command_and_load_round_trip(checkpoints, tokenizer_dir, tmp_path):
    import lvseg
    from lvseg.cli import main

    out = tmp_path / "lavt"
    path = checkpoints[("w12", "lavt_one")]
    assert main(["convert", "lavt", str(path), "-o", str(out), "--tokenizer", str(tokenizer_dir)]) == 0
    assert (out / "vocab.txt").is_file() or (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "lavt" and config["window"] == 12 and config["variant"] == "lavt_one"
    assert config["preprocessing"]["max_text_tokens"] == 20 and config["image_size"] == 480
    assert "license: gpl-3.0" in (out / "README.md").read_text()  # weights of GPL-3.0 code, even without --name
    model = lvseg.load(str(out), device="cpu")
    golden = load_file(str(FIXTURES / "w12.safetensors"))
    decoder, _ = run(model, "w12")
    assert_parity({"decoder_logits": decoder}, golden)
    # the model's own tokenizer gives the official ids
    ids, _ = model.tokenize(META["w12"]["expressions"])
    assert ids.tolist() == META["w12"]["token_ids"]


def test_segment_follows_the_refcoco_protocol_and_predict_takes_an_image(checkpoints, tokenizer_dir):
    import numpy as np

    model = build(checkpoints[("w7", "lavt")], True, tokenizer_dir)
    model.config.image_size = 96
    frames = torch.randn(2, 3, 3, 60, 80)
    logits, scores = model.segment(frames, ["the man on the left", "a red car"])
    assert logits.shape == (2, 3, 96, 96) and scores.shape == (2, 3)
    assert ((scores >= 0) & (scores <= 1)).all()
    # frame by frame: a frame's result does not depend on the other frames
    alone, _ = model.segment(frames[:, 1:2], ["the man on the left", "a red car"])
    torch.testing.assert_close(alone[:, 0], logits[:, 1], rtol=0, atol=1e-5)
    # a one-frame video (single-image inputs are handled by the Predictor; see issue 15's image-input work)
    image = (np.random.default_rng(0).random((1, 50, 70, 3)) * 255).astype(np.uint8)
    result = model.predict(image, "the dog on the left")
    assert tuple(result.masks.shape) == (1, 50, 70) and result.masks.dtype == torch.bool


def test_tokenizer_of_another_family_is_refused(checkpoints, tmp_path):
    from transformers import RobertaTokenizerFast

    roberta = RobertaTokenizerFast.from_pretrained(str(Path(__file__).parent / "fixtures" / "referformer" / "tokenizer"))
    with pytest.raises(TokenizerError, match=r"\[CLS\]"):
        convert_to_folder(checkpoints[("w7", "lavt")], tmp_path / "out", tokenizer=roberta)
    with pytest.raises(TokenizerError, match="does not exist"):
        convert_to_folder(checkpoints[("w7", "lavt")], tmp_path / "out", tokenizer=str(tmp_path / "nowhere"))
    assert not (tmp_path / "out").exists()


def test_converter_names_unknown_missing_and_mismatched_keys(tmp_path, tokenizer_dir):
    model, bert = official_states("w7")
    path = tmp_path / "bad.pth"
    model["backbone.layers.0.extra.weight"] = torch.zeros(2)
    torch.save({"model": model, "bert_model": bert}, path)
    with pytest.raises(CheckpointError, match=r"backbone\.layers\.0\.extra\.weight"):
        convert_to_folder(path, tmp_path / "o1", tokenizer=str(tokenizer_dir))
    model, bert = official_states("w7")
    model["classifier.conv1_1.weight"] = torch.zeros(3, 128, 1, 1)
    torch.save({"model": model, "bert_model": bert}, path)
    with pytest.raises(CheckpointError, match=r"classifier\.conv1_1\.weight: file \(3, 128, 1, 1\)"):
        convert_to_folder(path, tmp_path / "o2", tokenizer=str(tokenizer_dir))
    model, bert = official_states("w7")
    del model["backbone.norm2.weight"]
    torch.save({"model": model, "bert_model": bert}, path)
    with pytest.raises(CheckpointError, match=r"backbone\.out_norms\.2\.weight"):
        convert_to_folder(path, tmp_path / "o3", tokenizer=str(tokenizer_dir))
    model, bert = official_states("w7")
    model["backbone.layers.1.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    torch.save({"model": model, "bert_model": bert}, path)
    with pytest.raises(CheckpointError, match="relative_position_index"):
        convert(path)
    torch.save({"model": model}, path)
    with pytest.raises(CheckpointError, match="no BERT weights"):
        load_official_checkpoint(path)
    with pytest.raises(CheckpointError, match="--backbone swin-b"):
        convert_to_folder(checkpoint_w7(tmp_path), tmp_path / "o4", tokenizer=str(tokenizer_dir), backbone="swin-b")
    for out in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / out).exists()


def checkpoint_w7(tmp_path: Path) -> Path:
    return write_checkpoint("w7", "lavt", tmp_path / "w7.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(CheckpointError, match="a pickle but not a PyTorch checkpoint") as info:
        load_official_checkpoint(path)
    assert "weights_only" not in str(info.value)
    torch.save({"model": {}, "args": _Payload()}, tmp_path / "payload.pth")
    with pytest.raises(CheckpointError, match="which is not among the types"):
        load_official_checkpoint(tmp_path / "payload.pth")
    torch.save({"something": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an official LAVT checkpoint"):
        load_official_checkpoint(tmp_path / "other.pth")


def test_config_rejects_what_lavt_cannot_build():
    from lvseg.models.lavt.config import LAVTConfig
    from lvseg.models.layers.text import ROBERTA_BASE_CONFIG

    with pytest.raises(ConfigError, match="4 stages"):
        LAVTConfig(depths=(2, 2, 2))
    with pytest.raises(ConfigError, match="model_type 'bert'"):
        LAVTConfig(text_encoder=dict(ROBERTA_BASE_CONFIG))
    with pytest.raises(ConfigError, match="variant"):
        LAVTConfig(variant="lavt_two")
    with pytest.raises(ConfigError, match="fusion_heads"):
        LAVTConfig(fusion_heads=(3, 1, 1, 1))


# ------------------------------------------------------------------------------------------------- training
def test_official_recipe_trains_through_lvseg_train(checkpoints, tokenizer_dir, tmp_path):
    """The lavt-swin-b-refcoco recipe (AdamW, no decay on norms / bias tables, BERT embeddings frozen, poly 0.9
    per step, weighted CE) on a tiny LAVT: the loss on a fixed batch goes down."""
    from lvseg.train.engine import TrainConfig, Trainer
    from lvseg.train.presets import get_preset

    preset = get_preset("lavt-swin-b-refcoco")
    assert preset.family == "lavt" and preset.model == "lavt-swin-b.refcoco"
    model = build(checkpoints[("w7", "lavt")], False, tokenizer_dir)
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    masks[0, :, 8:40, 10:30] = True
    masks[1, :, 30:60, 20:62] = True
    data = [
        {"frames": torch.randn(1, 3, 64, 64, generator=g), "masks": masks[i], "text": text}
        for i, text in enumerate(["the man on the left", "a red car"])
    ]
    recipe = {**preset.train, "epochs": 40, "max_steps": 12, "batch_size": 2, "lr": 2e-3, "lr_backbone": 2e-3}
    config = TrainConfig(output_dir=str(tmp_path / "run"), progress=False, tensorboard=False, log_every=1, **recipe)
    trainer = Trainer(model, data, config)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    no_decay = {id(p) for p in groups["backbone_no_decay"]["params"]}
    named = dict(model.named_parameters())
    assert id(named["backbone.layers.0.blocks.0.norm1.weight"]) in no_decay
    assert id(named["backbone.layers.2.blocks.1.attn.relative_position_bias_table"]) in no_decay
    assert id(named["backbone.out_norms.3.weight"]) in no_decay
    assert id(named["backbone.layers.0.blocks.0.attn.qkv.weight"]) not in no_decay
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 1e-2
    assert not named["text_encoder.embeddings.word_embeddings.weight"].requires_grad  # not optimised officially
    assert named["text_encoder.encoder.layer.0.attention.self.query.weight"].requires_grad
    factor = trainer._lr_factory([])
    assert factor(0) == 1.0 and factor(20) == pytest.approx(0.5**0.9)  # poly over 40 epochs x 1 step
    result = trainer.fit()
    losses = [r["loss"] for r in result.history if "loss" in r]
    assert len(losses) >= 10 and losses[-1] < 0.7 * losses[0], losses


def test_registry_lists_every_released_image_checkpoint_with_its_paper_numbers():
    from lvseg.registry import get_entry, list_models

    tags = ("refcoco", "refcoco+", "gref-umd", "gref-google")
    names = [f"{arch}.{tag}" for arch in ("lavt-swin-b", "lavt-one-swin-b") for tag in tags]
    image = [n for n in list_models("lavt*") if not n.startswith("lavt-video-")]  # the video ones: test_lavt_video
    assert sorted(image) == sorted(names)
    splits = {"refcoco": 3, "refcoco+": 3, "gref-umd": 2, "gref-google": 1}
    for name in names:
        entry = get_entry(name)
        assert entry.family == "lavt" and entry.license == "gpl-3.0"
        assert entry.hub_revision is None and not entry.published  # convert from the official file
        assert entry.source is not None and entry.source.url.startswith("https://drive.google.com/file/d/")
        assert len(entry.paper_metrics) == 7 * splits[entry.tag]
        assert all("README" in m.source for m in entry.paper_metrics)
    assert get_entry("lavt-swin-b").name == "lavt-swin-b.refcoco"
    val = {m.metric: m.value for m in get_entry("lavt-swin-b.refcoco").paper_metrics if m.split == "val"}
    assert val["oIoU"] == 72.73 and val["mIoU"] == 74.46 and val["P@0.5"] == 84.46
    one = get_entry("lavt-one-swin-b.gref-google").paper_metrics
    assert {m.metric: m.value for m in one}["oIoU"] == 61.31 and "not established" in one[0].source


def test_refcoco_preset_data_has_no_validation_set_the_trainer_cannot_score(tmp_path):
    """Before: the preset returned normalised 480x480 RefCOCO val samples (no video/exp_id, float frames) as the
    validation set, and training died with a KeyError at its first evaluation, after the first interval of steps.
    Now the preset has no in-loop validation, and the trainer refuses such a set when it is built."""
    from test_data_a2dplus_refcoco import write_refcoco

    from lvseg.errors import ConfigError
    from lvseg.train.engine import TrainConfig, Trainer, check_validation_sample
    from lvseg.train.presets import refcoco_lavt_data

    write_refcoco(tmp_path / "refer")
    train, val = refcoco_lavt_data(tmp_path / "refer")
    assert val is None and len(train) > 0
    sample = train[0]
    with pytest.raises(ConfigError, match="lack"):
        check_validation_sample(sample)
    config = TrainConfig(output_dir=str(tmp_path / "run"), progress=False, tensorboard=False, max_steps=1)
    with pytest.raises(ConfigError, match="validation samples lack"):
        Trainer(torch.nn.Linear(1, 1), train, config, val_data=train)  # type: ignore[arg-type]
