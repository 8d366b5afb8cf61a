"""MTTR behaviour: config, window sizes, inference protocols, demo windowing, Hub/CLI loading, errors.

A tiny MTTR (random weights, tiny RoBERTa, tiny byte-level BPE tokenizer) keeps every test fast; parity with the
official code is in test_mttr_parity.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lvseg
from lvseg import registry
from lvseg.errors import ConfigError, InvalidInputError, InvalidTextError, WeightsNotPublishedError
from lvseg.models.base import PreprocessConfig
from lvseg.models.mttr.config import MTTRConfig
from lvseg.models.mttr.model import MTTR, MTTRWindowState, a2d_window_indices

from hubserver import LocalHub

TOKENIZER_DIR = Path(__file__).resolve().parent / "fixtures" / "referformer" / "tokenizer"
TINY_TEXT = dict(vocab_size=400, hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                 eos_token_id=2)
TEXTS = ["a dog jumping over the fence", "the man riding a bike"]


def tiny_config(**kw) -> MTTRConfig:
    pre = PreprocessConfig(short_side=32, max_size=48, window=24, overlap=6, max_text_tokens=32)
    fields = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 4), d_model=64, nheads=4, dim_feedforward=96,
                  num_queries=6, text_encoder=dict(TINY_TEXT), preprocessing=pre)
    fields.update(kw)
    return MTTRConfig(**fields)


def tiny_model(seed: int = 0, **kw) -> MTTR:
    from transformers import RobertaTokenizerFast

    torch.manual_seed(seed)
    return MTTR(tiny_config(**kw), tokenizer=RobertaTokenizerFast.from_pretrained(str(TOKENIZER_DIR))).eval()


def frames_of(seed: int, b: int, t: int, h: int = 32, w: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, t, 3, h, w), generator=g)


@pytest.fixture(scope="module")
def model() -> MTTR:
    return tiny_model()


# ----------------------------------------------------------------------------------------------- config
def test_config_round_trip_and_validation(tmp_path):
    config = tiny_config(protocol="frame")
    config.save(tmp_path / "config.json")
    assert MTTRConfig.load(tmp_path / "config.json") == config
    default = MTTRConfig()
    assert (default.preprocessing.window, default.preprocessing.overlap) == (24, 6)
    assert (default.preprocessing.short_side, default.preprocessing.max_size) == (360, 640)
    assert default.depths == (2, 2, 6) and default.num_queries == 50
    with pytest.raises(ConfigError, match="protocol"):
        MTTRConfig(protocol="davis")
    with pytest.raises(ConfigError, match="three Video Swin stages"):
        MTTRConfig(depths=(2, 2, 6, 2))
    with pytest.raises(ConfigError, match="multiple of 64"):
        MTTRConfig(d_model=96, nheads=8)


def test_full_size_parameter_count_matches_the_official_model():
    # 146,489,864 parameters in the official model (research notes §3.1); built on the meta device: no memory
    with torch.device("meta"):
        full = MTTR(MTTRConfig())
    assert sum(p.numel() for p in full.parameters()) == 146_489_864
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == 22_434_824  # RoBERTa frozen


# ------------------------------------------------------------------------------------------ window sizes
def test_every_window_size_from_1_to_16_fused_equals_eager(model):
    """T <= 8: one temporal window, no shift; T > 8: zero-padded to a multiple of 8 with shifted windows."""
    eager = tiny_model(fused_attention=False)
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        for t in range(1, 17):
            frames = frames_of(t, 1, t, 16, 36)  # stage maps 4x9, 2x5, 1x3: shifted spatial windows at stage 1
            fast, slow = model(frames, TEXTS[:1]), eager(frames, TEXTS[:1])
            assert fast["pred_masks"].shape == (1, t, 6, 4, 9)
            assert fast["pred_is_referred"].shape == (1, t, 6, 2)
            assert (fast["pred_masks"] - slow["pred_masks"]).abs().max() < 1e-4, t
            assert (fast["pred_is_referred"] - slow["pred_is_referred"]).abs().max() < 1e-4, t


def test_eager_transformer_attention_is_the_explicit_softmax_of_the_official_code(model, monkeypatch):
    """nn.MultiheadAttention with need_weights=False runs SDPA, which rounds differently from the explicit
    softmax(q k^T) v the official code gets (default need_weights=True): the eager path must ask for the weights
    (it is then bit-identical to mttr2021/MTTR on CPU), the fused path not."""
    calls: list[bool] = []
    forward = torch.nn.MultiheadAttention.forward

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("need_weights", True))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", spy)
    eager = tiny_model(fused_attention=False)
    with torch.no_grad():
        for net, expected in ((eager, True), (model, False)):
            calls.clear()
            net(frames_of(0, 1, 2), TEXTS[:1])
            assert len(calls) == 3 + 2 * 3 and set(calls) == {expected}  # 3 encoder, 3 decoder layers


def test_eager_attention_switch_equals_a_model_built_eager_and_is_restored(model):
    """``MTTR.eager_attention()`` (what the official evaluation pipelines use) turns a fused model into the eager
    one exactly (same outputs as a model built with fused_attention=False, bit for bit), and restores it after."""
    eager = tiny_model(fused_attention=False)
    eager.load_state_dict(model.state_dict())
    clip = frames_of(0, 1, 9)
    with torch.no_grad():
        reference = eager(clip, TEXTS[:1])
        fused_before = model(clip, TEXTS[:1])
        with model.eager_attention():
            assert model.config.fused_attention is False
            switched = model(clip, TEXTS[:1])
        fused_after = model(clip, TEXTS[:1])
    for key in ("pred_masks", "pred_is_referred"):
        assert torch.equal(switched[key], reference[key]), key
        assert torch.equal(fused_after[key], fused_before[key]), key
    assert model.config.fused_attention is True and model.backbone.fused_attention is True
    assert not torch.equal(fused_before["pred_masks"], reference["pred_masks"])  # the switch did change the path


def test_frames_are_linked_in_time_only_through_the_backbone(model):
    """Changing a frame changes the other frames' outputs (Video Swin), and the decoded annotated frame alone
    equals the same frame decoded with all others (the transformer is per frame)."""
    frames = frames_of(3, 1, 6)
    with torch.no_grad():
        base = model(frames, TEXTS[:1])["pred_masks"]
        changed = frames.clone()
        changed[:, 5] = 0
        other = model(changed, TEXTS[:1])["pred_masks"]
        centre = model(frames, TEXTS[:1], valid_indices=[3])["pred_masks"]
    assert (base[:, 0] - other[:, 0]).abs().max() > 1e-3
    assert torch.allclose(centre[:, 0], base[:, 3], atol=1e-5)


# -------------------------------------------------------------------------------------------- protocols
def test_ytvos_protocol_picks_one_query_by_time_averaged_probability(model):
    frames = frames_of(11, 2, 7)
    with torch.no_grad():
        raw = model(frames, TEXTS)
    probs = raw["pred_is_referred"].softmax(-1)[..., 0]  # [b, t, q]
    best = probs.mean(1).argmax(-1)
    logits, scores = model.segment(frames, TEXTS, protocol="ytvos")
    for i in range(2):
        assert torch.allclose(logits[i], raw["pred_masks"][i, :, best[i]], atol=1e-5)
        assert torch.allclose(scores[i], probs[i, :, best[i]], atol=1e-6)
    logits, scores = model.segment(frames, TEXTS, protocol="frame")
    per_frame = probs.argmax(-1)
    for i in range(2):
        for t in range(7):
            assert torch.allclose(logits[i, t], raw["pred_masks"][i, t, per_frame[i, t]], atol=1e-5)
    assert torch.allclose(scores, probs.max(-1).values, atol=1e-6)


def test_a2d_protocol_all_queries_on_the_centre_frame(model):
    frames = frames_of(12, 2, 10)
    with torch.no_grad():
        raw = model(frames, TEXTS)
    masks, scores = model.segment_annotated_frame(frames, TEXTS)
    assert masks.shape == (2, 6, 8, 12) and scores.shape == (2, 6)
    assert torch.allclose(masks, raw["pred_masks"][:, 5], atol=1e-5)
    assert torch.allclose(scores, raw["pred_is_referred"][:, 5].softmax(-1)[..., 0], atol=1e-6)


def test_a2d_window_indices_clamp_at_the_edges():
    assert a2d_window_indices(20, 50, 10) == list(range(14, 24))  # frame 20 (1-based) is index 19, at position 5
    assert a2d_window_indices(20, 50, 10)[10 // 2] == 19
    assert a2d_window_indices(1, 50, 10) == [0] * 6 + [1, 2, 3, 4]
    assert a2d_window_indices(50, 50, 8) == [45, 46, 47, 48, 49, 49, 49, 49]
    assert a2d_window_indices(3, 5, 8, one_based=False) == [0, 0, 1, 2, 3, 4, 4, 4]
    with pytest.raises(InvalidInputError, match="outside"):
        a2d_window_indices(51, 50, 10)


def test_expressions_sharing_one_clip_equal_separate_runs(model):
    clip = frames_of(13, 1, 4)
    shared_logits, shared_scores = model.segment(clip.expand(2, -1, -1, -1, -1), TEXTS)
    for i, text in enumerate(TEXTS):
        logits, scores = model.segment(clip, [text])
        assert torch.allclose(shared_logits[i], logits[0], atol=1e-5)
        assert torch.allclose(shared_scores[i], scores[0], atol=1e-6)


def test_text_is_lower_cased_and_whitespace_collapsed(model):
    frames = frames_of(14, 1, 2)
    a, _ = model.segment(frames, ["The  DOG jumping"])
    b, _ = model.segment(frames, ["the dog jumping"])
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ demo
def scene_change_video() -> torch.Tensor:
    """66 frames whose content changes at frame 30 (a cut): the official demo's per-window choice switches."""
    video = frames_of(1, 1, 66)
    video[:, 30:] = video[:, 30:] * 0.2 + 2.0
    return video


def windows(num_frames: int, window: int = 24, overlap: int = 6) -> list[tuple[int, int]]:
    step = window - overlap
    out, start = [], 0
    while True:
        out.append((start, min(start + window, num_frames)))
        if start + window >= num_frames:
            return out
        start += step


def test_demo_windowing_follows_one_object_across_windows():
    model = tiny_model(seed=1)
    video = scene_change_video()
    spans = windows(66)
    assert spans == [(0, 24), (18, 42), (36, 60), (54, 66)]
    state, linked, independent = None, [], []
    previous, seen = torch.zeros(1, 6), 0
    for s, e in spans:
        clip = video[:, s:e]
        logits, scores, state = model.segment_window(clip, TEXTS[:1], state)
        assert isinstance(state, MTTRWindowState) and logits.shape == (1, e - s, 8, 12)
        if s == 0:  # the state holds the summed referred probabilities; one window = the Ref-YouTube-VOS rule
            with torch.no_grad():
                raw = model(clip, TEXTS[:1])
            probs = raw["pred_is_referred"].softmax(-1)[..., 0]
            assert torch.allclose(state.score_sums, probs.sum(1), atol=1e-5)
            best = int(probs.mean(1).argmax(-1))
            assert torch.allclose(logits[0], raw["pred_masks"][0, :, best], atol=1e-5)
            assert torch.allclose(scores[0], probs[0, :, best], atol=1e-6)
        # the rule: argmax of every query's probability averaged over all frames seen so far
        seen += e - s  # the 6 overlapping frames count twice
        assert state.frames == seen and state.query.tolist() == (state.score_sums / seen).argmax(-1).tolist()
        linked.append(int(state.query))
        independent.append(int((state.score_sums - previous).argmax(-1)))  # this window alone (official demo)
        previous = state.score_sums.clone()
    # the official demo would switch objects between windows; the linked choice keeps the first window's object
    assert len(set(independent)) > 1, independent
    assert len(set(linked)) == 1, linked


def test_predictor_uses_the_demo_windows(model):
    video = (torch.rand(40, 40, 60, 3) * 255).to(torch.uint8).numpy()
    result = model.predict(video, TEXTS[0], progress=False)
    assert result.masks.shape == (40, 40, 60) and result.masks.dtype == torch.bool
    assert result.scores.shape == (40,) and ((result.scores >= 0) & (result.scores <= 1)).all()


# --------------------------------------------------------------------------------------- hub and CLI
def test_lvseg_predict_by_registry_name_through_the_local_hub(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from lvseg.cli import main

    entry = registry.get_entry("mttr-swin-t.ytvos")
    assert not entry.published
    with pytest.raises(WeightsNotPublishedError, match="lvseg convert mttr"):
        lvseg.load("mttr-swin-t.ytvos", cache_dir=tmp_path / "cache")
    folder = tiny_model(seed=1).save_pretrained(tmp_path / "model", entry=entry)
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)).save(frames_dir / f"{i:05d}.png")
    with LocalHub() as hub:
        revision = hub.add_commit("lvseg-test/mttr-swin-t.ytvos", files)
        published = dataclasses.replace(entry, hub_repo="lvseg-test/mttr-swin-t.ytvos", hub_revision=revision)
        monkeypatch.setitem(registry._ENTRIES, entry.name, published)  # as after `lvseg push` + pinning
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
        code = main(["predict", str(frames_dir), "The dog", "-m", "mttr-swin-t.ytvos", "-o", str(tmp_path / "out"),
                     "--format", "png", "rle", "-q", "--device", "cpu"])
        assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["text"] == "The dog" and summary[0]["frames"] == 9
    assert len(list((tmp_path / "out" / "expression_0").glob("*.png"))) == 9
    assert any("/resolve/" in path for _, path in hub.requests)


def test_registry_entries():
    names = lvseg.list_models("mttr-*")
    assert names == ["mttr-swin-t.a2d", "mttr-swin-t.a2d-w8", "mttr-swin-t.ytvos"]
    a2d, w8, ytvos = (registry.get_entry(n) for n in names)
    assert registry.get_entry("mttr-swin-t") is ytvos
    assert a2d.config["preprocessing"]["window"] == 10 and w8.config["preprocessing"]["window"] == 8
    assert {(m.dataset, m.metric, m.value) for m in a2d.paper_metrics} == {
        ("A2D-Sentences", "mAP", 46.1), ("JHMDB-Sentences", "mAP", 39.2)}
    assert {(m.dataset, m.value) for m in w8.paper_metrics} == {("A2D-Sentences", 44.7), ("JHMDB-Sentences", 36.6)}
    assert [(m.dataset, m.metric, m.value) for m in ytvos.paper_metrics] == [("Ref-YouTube-VOS", "J&F", 55.32)]
    assert ytvos.source.filename == "refer-youtube-vos_window-12.pth.tar"


# ------------------------------------------------------------------------------------------------ errors
def test_bad_inputs_raise_clear_errors(model):
    frames = frames_of(0, 1, 2)
    with pytest.raises(InvalidInputError, match=r"\[B, T, 3, H, W\]"):
        model.segment(frames[0], TEXTS[:1])
    with pytest.raises(InvalidInputError, match="normalised floats"):
        model.segment(frames.to(torch.uint8), TEXTS[:1])
    with pytest.raises(InvalidInputError, match="2 expressions"):
        model.segment(frames, TEXTS)
    with pytest.raises(InvalidInputError, match="too small"):
        model.segment(frames[..., :8, :8], TEXTS[:1])
    with pytest.raises(InvalidTextError, match="empty"):
        model.segment(frames, ["   "])
    with pytest.raises(InvalidTextError, match="tokens long"):
        model.segment(frames, [" ".join(["dog"] * 40)])
    with pytest.raises(InvalidInputError, match="valid_indices"):
        model(frames, TEXTS[:1], valid_indices=[2])
    with pytest.raises(ConfigError, match="protocol"):
        model.segment(frames, TEXTS[:1], protocol="davis")
    no_tokenizer = MTTR(tiny_config())
    with pytest.raises(ConfigError, match="no tokenizer"):
        no_tokenizer.segment(frames, TEXTS[:1])


def test_bfloat16_runs(model):
    half = tiny_model()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    logits, scores = half.segment(frames_of(1, 1, 3), TEXTS[:1])
    ref, _ = model.segment(frames_of(1, 1, 3), TEXTS[:1])
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    assert (logits.float() - ref).abs().mean() < 0.1 * ref.abs().mean() + 0.05
