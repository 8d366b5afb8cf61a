"""MTTR against golden outputs of the official code (mttr2021/MTTR 2cc35ab), through the official file format.

The fixture (tests/fixtures/mttr/tiny.*) was produced by tests/fixtures/mttr/generate_golden.py: the official
model with reduced sizes (same code paths: Video Swin window (8, 7, 7), three stages, per-frame transformer) and
deterministic weights (tests/fixtures/mttr/mttr_weights.py). Here the same weights are written as an official
checkpoint, converted with lvseg's converter and run on the same inputs.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lvseg.errors import CheckpointError
from lvseg.models.mttr.convert import convert, convert_to_folder, load_official_checkpoint
from lvseg.models.mttr.model import MTTR, postprocess_masks

from parity import RELATIVE_TOLERANCE, assert_parity, parity_failures, swap_weights, threshold_margin_failures

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES / "mttr"))
from mttr_weights import fill_official_state, make_frames, unpack_bits  # noqa: E402

META = json.loads((FIXTURES / "mttr" / "tiny.json").read_text())
TOKENIZER_DIR = FIXTURES / "referformer" / "tokenizer"


def tokenizer():
    from transformers import RobertaTokenizerFast

    # from_pretrained (not the constructor, which transformers 5 no longer feeds vocab/merges files)
    return RobertaTokenizerFast.from_pretrained(str(TOKENIZER_DIR))


def official_window_index(window: tuple[int, int, int]) -> torch.Tensor:
    """The official relative_position_index buffer, written out independently of lvseg's helper."""
    wd, wh, ww = window
    coords = [(d, h, w) for d in range(wd) for h in range(wh) for w in range(ww)]
    index = torch.empty(len(coords), len(coords), dtype=torch.long)
    for i, (d1, h1, w1) in enumerate(coords):
        for j, (d2, h2, w2) in enumerate(coords):
            index[i, j] = ((d1 - d2 + wd - 1) * (2 * wh - 1) + (h1 - h2 + wh - 1)) * (2 * ww - 1) + (w1 - w2 + ww - 1)
    return index


def official_state() -> dict[str, torch.Tensor]:
    """The official-format state dict of the fixture model (as transformers 4.11 saved it: with position_ids)."""
    state = fill_official_state({k: tuple(v) for k, v in META["official_float_shapes"].items()})
    index = official_window_index((8, 7, 7))
    for key in META["official_keys"]:
        if key.endswith("relative_position_index"):
            state[key] = index
    max_pos = META["config"]["text_encoder"]["max_position_embeddings"]
    state["transformer.text_encoder.embeddings.position_ids"] = torch.arange(max_pos)[None]
    return state


def overrides() -> dict:
    """What shapes cannot tell about the tiny fixture model (attention heads)."""
    cfg = META["config"]
    return {"nheads": cfg["nheads"], "num_heads": tuple(cfg["num_heads"]),
            "text_encoder": {"num_attention_heads": cfg["text_encoder"]["num_attention_heads"]}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mttr") / "official.pth.tar"
    torch.save({"epoch": 69, "total_epochs": 70, "model_state_dict": official_state(),
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "best_mAP": 0.461}, path)
    return path


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "mttr" / "tiny.safetensors"))


def build(checkpoint: Path, fused: bool) -> MTTR:
    state, config = convert(checkpoint, fused_attention=fused, **overrides())
    model = MTTR(config, tokenizer=tokenizer()).eval()
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def model(checkpoint) -> MTTR:
    return build(checkpoint, fused=True)


def test_fixture_records_the_official_commit(golden):
    assert META["official_repo"] == "mttr2021/MTTR" and META["official_commit"] == "2cc35ab"


def test_wrapped_and_plain_layouts_convert_to_the_same_weights(checkpoint, tmp_path):
    wrapped = load_official_checkpoint(checkpoint)
    assert "transformer.text_encoder.embeddings.position_ids" in wrapped  # the stale key is there ...
    plain = tmp_path / "plain.pth"
    torch.save(official_state(), plain)
    state_a, config_a = convert(checkpoint, **overrides())
    state_b, config_b = convert(plain, **overrides())
    assert config_a == config_b
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # ... and dropped, like the 10 recomputed relative_position_index buffers; everything else is kept by name
    assert len(state_a) == len(wrapped) - 1 - 6
    model = MTTR(config_a)
    assert set(model.state_dict()) == set(state_a)  # strict


def test_inferred_config_matches_the_fixture(checkpoint):
    _, config = convert(checkpoint, **overrides())
    cfg = META["config"]
    assert (config.embed_dim, list(config.depths), config.d_model, config.num_queries) == (
        cfg["embed_dim"], cfg["depths"], cfg["d_model"], cfg["num_queries"])
    assert config.num_encoder_layers == 3 and config.num_decoder_layers == 3
    assert config.dim_feedforward == cfg["dim_feedforward"]
    assert config.text_encoder["hidden_size"] == 48 and config.text_encoder["vocab_size"] == 400


def raw_outputs(net: MTTR) -> dict[str, torch.Tensor]:
    """The raw outputs the fixture holds, by fixture key, for every case of the fixture."""
    h, w = META["size"]
    outputs = {}
    with torch.no_grad():
        for case in META["cases"]:
            t = case["frames"]
            frames = make_frames(case["seed"], 2, t, h, w)
            if "padded" in case:
                ph, pw = case["padded"]
                frames[1, :, :, ph:] = 0
                frames[1, :, :, :, pw:] = 0
                pad = torch.ones(2, t, h, w, dtype=torch.bool)
                pad[0] = False
                pad[1, :, :ph, :pw] = False
                out, prefix = net(frames, META["expressions"], padding_mask=pad), f"pad{t}"
            else:
                out, prefix = net(frames, META["expressions"]), f"t{t}"
            assert len(out["aux_outputs"]) == 2
            outputs.update({f"{prefix}.{key}": out[key] for key in ("pred_is_referred", "pred_masks")})
    return outputs


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_raw_outputs_match_the_official_code(checkpoint, golden, model, fused):
    """Within tests/parity.py's RELATIVE_TOLERANCE of each output's magnitude (any CPU's rounding)."""
    net = model if fused else build(checkpoint, fused=False)
    assert_parity(raw_outputs(net), golden)


def test_a_swapped_weight_pair_fails_the_parity_check(checkpoint, golden):
    """One pair of same-shaped converted weights exchanged (a wrong key mapping) fails the check above: the two
    LayerNorm scales of the last backbone block differ only by their 0.1-sized noise."""
    state, config = convert(checkpoint, **overrides())
    swapped = swap_weights(state, "backbone.layers.2.blocks.1.norm1.weight", "backbone.layers.2.blocks.1.norm2.weight")
    net = MTTR(config, tokenizer=tokenizer()).eval()
    net.load_state_dict(swapped, strict=True)
    outputs = raw_outputs(net)
    failures = parity_failures(outputs, golden)
    assert failures.get("t8.pred_masks", 0.0) > 100 * RELATIVE_TOLERANCE, failures
    with pytest.raises(AssertionError, match="pred_masks"):
        assert_parity(outputs, golden)


def test_final_masks_identical_to_the_official_post_processing(golden, model):
    """The official post-processing of our logits gives the official masks, up to pixels whose logit is within
    the parity tolerance of the threshold (rounding decides those, on any machine)."""
    h, w = META["size"]
    oh, ow = META["original_size"]

    def to_masks(logits):
        return torch.stack([postprocess_masks(x, (h, w), (h, w), (oh, ow)) for x in logits])

    for case in META["cases"]:
        if "padded" in case:
            continue
        t = case["frames"]
        frames = make_frames(case["seed"], 2, t, h, w)
        margin = RELATIVE_TOLERANCE * golden[f"t{t}.pred_masks"].abs().max().item()
        logits, scores = model.segment(frames, META["expressions"], protocol="ytvos")
        assert logits.shape == (2, t, (h + 3) // 4, (w + 3) // 4) and scores.shape == (2, t)
        expected = unpack_bits(golden[f"t{t}.ytvos_masks"], oh, ow)
        assert threshold_margin_failures(to_masks, logits, expected, margin) == 0, f"T={t} Ref-YouTube-VOS"
        # A2D/JHMDB: all queries on the centre frame, scores = referred probability
        all_logits, all_scores = model.segment_annotated_frame(frames, META["expressions"])
        assert_parity({f"t{t}.a2d_scores": all_scores}, golden)
        expected = unpack_bits(golden[f"t{t}.a2d_masks"], oh, ow)
        assert threshold_margin_failures(to_masks, all_logits, expected, margin) == 0, f"T={t} A2D"


def test_convert_to_folder_round_trip(checkpoint, tmp_path, golden):
    import lvseg

    folder = convert_to_folder(checkpoint, tmp_path / "out", tokenizer=str(TOKENIZER_DIR), name="mttr-swin-t.ytvos")
    # convert_to_folder infers the official head counts (8 / 12), so write the fixture's into the config by hand:
    # the folder's weights are what this test checks.
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "mttr" and config["preprocessing"]["window"] == 24
    assert config["preprocessing"]["overlap"] == 6 and config["protocol"] == "ytvos"
    config.update(nheads=META["config"]["nheads"], num_heads=META["config"]["num_heads"])
    config["text_encoder"]["num_attention_heads"] = META["config"]["text_encoder"]["num_attention_heads"]
    (folder / "config.json").write_text(json.dumps(config))
    card = (folder / "README.md").read_text()
    assert "55.32" in card and "1R_F0ETKipENiJUnVwarHnkPmUIcKXRaL" in card
    loaded = lvseg.load(str(folder), device="cpu")
    h, w = META["size"]
    case = META["cases"][2]
    frames = make_frames(case["seed"], 2, case["frames"], h, w)
    with torch.no_grad():
        out = loaded(frames, META["expressions"])
    key = f"t{case['frames']}.pred_masks"
    assert_parity({key: out["pred_masks"]}, golden)


def test_converter_names_unknown_and_missing_keys(tmp_path):
    state = official_state()
    state["transformer.extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    state_out, config = convert(path, **overrides())
    with pytest.raises(CheckpointError, match="transformer.extra_head.weight"):
        from lvseg.hub import load_state_dict_strict

        load_state_dict_strict(MTTR(config), state_out, str(path))
    del state["obj_queries.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="obj_queries.weight"):
        convert(path)
    state = official_state()
    state["backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(392, 392, dtype=torch.long)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="relative_position_index"):
        convert(path, **overrides())


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"model_state_dict": _Payload()}, f)
    with pytest.raises(CheckpointError, match="a pickle but not a PyTorch checkpoint") as info:
        load_official_checkpoint(path)
    assert "weights_only" not in str(info.value)  # PyTorch's advice to run the file's code never reaches a user
    torch.save({"model_state_dict": {}, "payload": _Payload()}, tmp_path / "payload.pth")  # torch.save'd
    with pytest.raises(CheckpointError, match=r"object of type (builtins\.)?print, which is not among the types") as info:
        load_official_checkpoint(tmp_path / "payload.pth")
    assert "weights_only" not in str(info.value)
    torch.save({"something": [1, 2]}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an official MTTR checkpoint"):
        load_official_checkpoint(tmp_path / "other.pth")


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_convert_command_on_a_damaged_file_names_the_problem(checkpoint, tmp_path, capsys, damage):
    """`lvseg convert` on a random, truncated or empty file: rc 1 and one line that says what is wrong with the
    file, never a traceback nor PyTorch's advice to retry with weights_only=False (which runs pickled code)."""
    from lvseg.cli import main

    data = checkpoint.read_bytes()
    bad = tmp_path / "bad.pth"
    bad.write_bytes({"random": bytes(range(256)) * 64, "truncated": data[: len(data) * 2 // 3], "empty": b""}[damage])
    assert main(["convert", "mttr", str(bad), "-o", str(tmp_path / "out"), "--tokenizer", str(TOKENIZER_DIR)]) == 1
    err = capsys.readouterr().err
    expected = {"random": "it is not a PyTorch checkpoint", "truncated": "it is truncated or damaged",
                "empty": "is empty (0 bytes)"}[damage]
    assert expected in err and str(bad) in err, err
    assert "weights_only" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
