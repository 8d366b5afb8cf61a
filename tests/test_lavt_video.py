"""LAVT video model (``lavt_video``): parity with the official code (golden fixtures), converter, protocols.

The golden fixtures (tests/fixtures/lavt_video/tiny-*.json|safetensors) were written by generate_golden.py from the
official code (Yxxxb/LAVT-RS c464cf8426da1ed537f10486381dd36d6fe74b82, the released flags ``--sep_t_pwam
--conv3d_kernel_size_t 3-3-3 --conv3d_kernel_size_s 1-1-1 --w_t3x3_s1x1 --mm_t3x3_s1x1``, Video Swin with reduced
sizes) with deterministic weights (referformer_weights.fill_value, seeded by each official key); the tests rebuild
the same official-format checkpoint, convert it with our converter and compare. At 64x96 the stage maps are 16x24,
8x12, 4x6, 2x3: stages 1-2 pad to the 7x7 window and shift it, stages 3-4 shrink it; 3 frames shrink the temporal
window (8 -> 3, no temporal shift), 10 frames use the full window 8 with temporal padding to 16 and shift 4. The
3x3x3 PWAM convolutions are zero padded at both ends of the clip in every case.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lvseg.errors import CheckpointError, ConfigError, InvalidInputError
from lvseg.models.convert_utils import read_official_checkpoint
from lvseg.models.lavt.video import LAVTVideo, first_occurrence
from lvseg.models.lavt.video_config import LAVTVideoConfig
from lvseg.models.lavt.video_convert import convert_video_state_dict, infer_video_config
from lvseg.models.layers.swin import _relative_position_index
from lvseg.predictor import upsample_mask_logits

from parity import RELATIVE_TOLERANCE, assert_parity, parity_failures, swap_weights, threshold_margin_failures

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lavt_video"
sys.path.insert(0, str(FIXTURES.parent / "referformer"))
from referformer_weights import fill_official_state  # noqa: E402

TOKENIZER = FIXTURES / "tokenizer"
OFFICIAL_COMMIT = "c464cf8426da1ed537f10486381dd36d6fe74b82"


def tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(TOKENIZER), do_lower_case=True)


def official_state(meta: dict) -> dict[str, torch.Tensor]:
    """The official state dict the golden outputs came from (weights from fill_value, buffers recomputed)."""
    rows = meta["state_dict"]
    state = fill_official_state({k: tuple(s) for k, s, dt in rows if dt.startswith("float")})
    for k, s, dt in rows:
        if k.endswith("relative_position_index"):
            state[k] = _relative_position_index((8, 7, 7))
        elif k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(0)
    assert list(state) != [] and set(state) == {k for k, _, _ in rows}
    return state


def official_checkpoint(name: str, path: Path, drop: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """Rebuild fixture ``name``'s official-format checkpoint (``train.py``'s layout, args as a Namespace)."""
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    state = {k: v for k, v in official_state(meta).items() if not k.startswith(drop)}
    args = argparse.Namespace(model="lavt_video", sep_t_pwam=True, conv3d_kernel_size_t="3-3-3",
                              conv3d_kernel_size_s="1-1-1", w_t3x3_s1x1=True, mm_t3x3_s1x1=True, swin_type="tiny",
                              window12=False, mha="", use_checkpoint=False)
    torch.save({"model": state, "optimizer": {}, "epoch": 0, "args": args, "lr_scheduler": {}, "scaler": {}}, path)
    return path, meta


def convert_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], LAVTVideoConfig]:
    ckpt = read_official_checkpoint(path, "an official lavt_video checkpoint")
    config = infer_video_config(ckpt["model"], vars(ckpt["args"]))
    return convert_video_state_dict(ckpt["model"], config), config


def load_model(path: Path, swap: tuple[str, str] | None = None) -> LAVTVideo:
    state, config = convert_checkpoint(path)
    model = LAVTVideo(config, tokenizer=tokenizer()).eval()
    model.load_state_dict(swap_weights(state, *swap) if swap else state, strict=True)
    return model


def golden_frames(meta: dict) -> torch.Tensor:
    h, w = meta["size"]
    return torch.randn(1, meta["frames"], 3, h, w, generator=torch.Generator().manual_seed(meta["frames_seed"]))


def outputs(model: LAVTVideo, meta: dict, fused: bool = True) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The decoder's stride-4 logits per expression (fixture keys) and the full-size 2-class logits."""
    model.backbone.fused_attention = fused
    for module in model.backbone.modules():
        if hasattr(module, "fused"):
            module.fused = fused
    frames = golden_frames(meta)
    lowres: list[torch.Tensor] = []
    hook = model.classifier.register_forward_hook(lambda m, i, o: lowres.append(o))
    full = []
    try:
        with torch.no_grad():
            for text in meta["expressions"]:
                full.append(model(frames, [text])[0])  # [T, 2, H, W]
    finally:
        hook.remove()
    return {f"lowres.{i}": x for i, x in enumerate(lowres)}, full


def ytvos_mask_failures(full: list[torch.Tensor], meta: dict, golden: dict, margin: float) -> int:
    """Pixels of the golden Ref-YouTube-VOS masks (argmax after bilinear align_corners=True upsampling to the
    original size) that logits within ``margin`` of ours cannot explain; our masks come from the Predictor's
    ``aligned`` rule on ``logit_1 - logit_0``."""
    size = tuple(meta["size"])

    def to_mask(x):
        return upsample_mask_logits(x, size, size, tuple(meta["orig_size"]), "aligned")[0]

    return sum(threshold_margin_failures(to_mask, x[:, 1] - x[:, 0], golden[f"ytvos_binary.{i}"], 2 * margin)
               for i, x in enumerate(full))


@pytest.mark.parametrize("name", ["tiny-3f", "tiny-10f"])
def test_matches_the_official_outputs(name, tmp_path):
    path, meta = official_checkpoint(name, tmp_path / "checkpoint.pth")
    assert meta["official_commit"] == OFFICIAL_COMMIT
    model = load_model(path)
    config = model.config
    assert config.window == (8, 7, 7) and config.temporal_kernel == (3, 3, 3) and config.spatial_kernel == (1, 1, 1)
    assert config.embed_dim == 32 and config.depths == (2, 2, 2, 2) and config.last_stage_gate
    # the official token budget: 22 ids after [CLS]/[SEP], the long expression loses its [SEP], padding id 0
    ids, mask = model.tokenize(meta["expressions"])
    assert ids.tolist() == meta["token_ids"] and mask.tolist() == meta["attention_mask"]
    assert ids[1, -1] != 102 and ids[0].tolist().count(102) == 1
    golden = load_file(str(FIXTURES / f"{name}.safetensors"))
    for fused in (True, False):  # SDPA windows (the default) and the eager reference path
        lowres, full = outputs(model, meta, fused)
        assert_parity(lowres, {k: golden[k] for k in lowres})
        margin = RELATIVE_TOLERANCE * max(golden[k].abs().max().item() for k in lowres)
        assert ytvos_mask_failures(full, meta, golden, margin) == 0


# One pair of same-shaped official weights exchanged, as a wrong key mapping would: the parity check must catch it.
SWAPS = {
    "pwam-t-branches": ("backbone.layers.1.fusion.W_t.0.weight", "backbone.layers.1.fusion.project_mm_t.0.weight"),
    "pwam-s-branches": ("backbone.layers.2.fusion.W_s.0.bias", "backbone.layers.2.fusion.project_mm_s.0.bias"),
    "stage-norms": ("backbone.layers.3.blocks.1.norm1.weight", "backbone.layers.3.blocks.1.norm2.weight"),
}


@pytest.mark.parametrize("case", sorted(SWAPS))
def test_a_swapped_weight_pair_fails_the_parity_check(case, tmp_path):
    path, meta = official_checkpoint("tiny-3f", tmp_path / "checkpoint.pth")
    ckpt = read_official_checkpoint(path, "x")
    swapped = swap_weights(ckpt["model"], *SWAPS[case])
    config = infer_video_config(swapped, {})
    model = LAVTVideo(config, tokenizer=tokenizer()).eval()
    model.load_state_dict(convert_video_state_dict(swapped, config), strict=True)
    golden = load_file(str(FIXTURES / "tiny-3f.safetensors"))
    lowres, _ = outputs(model, meta)
    failures = parity_failures(lowres, {k: golden[k] for k in lowres})
    assert max(failures.values(), default=0.0) > 100 * RELATIVE_TOLERANCE, failures


def test_checkpoints_without_the_last_stage_gate_convert_to_the_same_model(tmp_path):
    """--use_checkpoint training leaves out the last stage's gate (its output is never used)."""
    path, meta = official_checkpoint("tiny-3f", tmp_path / "a.pth", drop=("backbone.layers.3.res_gate.",))
    model = load_model(path)
    assert not model.config.last_stage_gate and len(model.gates) == 3
    golden = load_file(str(FIXTURES / "tiny-3f.safetensors"))
    lowres, _ = outputs(model, meta)
    assert_parity(lowres, {k: golden[k] for k in lowres})
    # only the last stage may lack it
    path, _ = official_checkpoint("tiny-3f", tmp_path / "b.pth", drop=("backbone.layers.1.res_gate.",))
    with pytest.raises(CheckpointError, match=r"stages \[1\] lack their language gate"):
        convert_checkpoint(path)


def official_meta_state() -> dict[str, torch.Tensor]:
    """The 512 official keys and shapes of the released Video Swin-T lavt_video (LAVT-RS README flags)."""
    with gzip.open(FIXTURES / "official_keys_swin_t.json.gz", "rt") as f:
        rows = json.load(f)["state_dict"]
    dtypes = {"float32": torch.float32, "int64": torch.int64}
    return {k: torch.empty(s, dtype=dtypes[dt], device="meta") for k, s, dt in rows}


def test_the_released_swin_t_layout_converts_and_loads_strictly():
    state = official_meta_state()
    assert len(state) == 512
    config = infer_video_config(state, {"mha": ""})
    assert (config.embed_dim, config.depths, config.num_heads) == (96, (2, 2, 6, 2), (3, 6, 12, 24))
    assert config.window == (8, 7, 7) and config.temporal_kernel == (3, 3, 3) and config.drop_path_rate == 0.1
    assert config.text_encoder["num_hidden_layers"] == 12 and config.text_encoder["vocab_size"] == 30522
    converted = convert_video_state_dict(state, config)
    with torch.device("meta"):
        model = LAVTVideo(config)
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    n_params = sum(v.numel() for k, v in state.items() if v.dtype == torch.float32 and "running" not in k)
    assert n_params == 239_885_672  # research notes §3.1: the official parameter count
    assert LAVTVideoConfig.from_dict(json.loads(config.to_json_string())) == config


def test_the_converter_names_what_does_not_fit():
    state = official_meta_state()
    config = infer_video_config(state, {})
    extra = dict(state, **{"backbone.layers.0.fusion.extra.weight": torch.empty(3, device="meta")})
    with pytest.raises(CheckpointError, match="no lvseg counterpart.*fusions.0.extra.weight"):
        convert_video_state_dict(extra, config)
    wrong = dict(state, **{"classifier.conv1_1.bias": torch.empty(3, device="meta")})
    with pytest.raises(CheckpointError, match=r"shape mismatches.*classifier.conv1_1.bias \(3,\)"):
        convert_video_state_dict(wrong, config)
    missing = {k: v for k, v in state.items() if k != "backbone.norm2.weight"}
    with pytest.raises(CheckpointError, match="lacks.*backbone.out_norms.2.weight"):
        convert_video_state_dict(missing, config)
    plain = {k.replace(".fusion.W_t.", ".fusion.W."): v for k, v in state.items()}
    with pytest.raises(CheckpointError, match="not the released separable 3-D PWAM"):
        infer_video_config(plain, {})
    with pytest.raises(CheckpointError, match="mha='2-2'"):
        infer_video_config(state, {"mha": "2-2"})


def small_config(**kw) -> LAVTVideoConfig:
    text = dict(model_type="bert", vocab_size=144, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                intermediate_size=64, max_position_embeddings=40, type_vocab_size=2, pad_token_id=0)
    return LAVTVideoConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), image_size=64,
                           text_encoder=text, **kw)


def test_segment_applies_the_ytvos_protocol_and_a2d_uses_the_first_occurrence():
    torch.manual_seed(0)
    model = LAVTVideo(small_config(), tokenizer=tokenizer()).eval()
    frames = torch.randn(1, 5, 3, 48, 80)
    frames[:, 1:3] = frames[:, 0:1]  # a clip clamped at the video's start: frame 0 three times
    logits, scores = model.segment(frames, ["the dog"])
    assert logits.shape == (1, 5, 64, 64) and scores.shape == (1, 5)
    square = torch.nn.functional.interpolate(frames[0], size=(64, 64), mode="bilinear", antialias=True)[None]
    expected = model(square, ["the dog"])
    assert torch.allclose(logits, expected[:, :, 1] - expected[:, :, 0], atol=1e-5)
    assert torch.allclose(scores, logits.flatten(2).amax(-1).sigmoid())
    assert first_occurrence(frames, 2) == 0 and first_occurrence(frames, 3) == 3
    one, one_score = model.segment_annotated_frame(frames, ["the dog"], frame_index=2)
    assert torch.equal(one[:, 0], logits[:, 0]) and torch.equal(one_score[:, 0], scores[:, 0])
    assert not torch.equal(logits[:, 0], logits[:, 2])  # the position in the clip matters
    assert model.annotated_clip_frames() == 16 and model.benchmark_protocol("ytvos") == "ytvos"
    assert model.output_upsampling() == "aligned"
    with pytest.raises(InvalidInputError, match="frame_index 7"):
        model.segment_annotated_frame(frames, ["the dog"], frame_index=7)
    with pytest.raises(InvalidInputError, match="2 videos but 1 expressions"):
        model.segment(frames.expand(2, -1, -1, -1, -1), ["the dog"])
    with pytest.raises(ConfigError, match="unknown protocol 'davis'"):
        model.segment(frames, ["the dog"], protocol="davis")


def test_config_checks_and_round_trip():
    config = small_config()
    assert LAVTVideoConfig.from_dict(json.loads(config.to_json_string())) == config
    assert config.preprocessing.max_text_tokens == 22 and config.preprocessing.window == 36
    with pytest.raises(ConfigError, match="odd sizes"):
        small_config(temporal_kernel=(2, 3, 3))
    with pytest.raises(ConfigError, match="window needs 3 entries"):
        small_config(window=(7, 7))
    with pytest.raises(ConfigError, match="lacks the required field"):
        LAVTVideoConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "window"})
    # the text-encoder checks the image config makes too (one helper in lavt/config.py)
    from lvseg.models.layers.text import ROBERTA_BASE_CONFIG

    with pytest.raises(ConfigError, match="model_type 'bert'"):
        LAVTVideoConfig(text_encoder=dict(ROBERTA_BASE_CONFIG))
    raw = config.to_dict()
    raw["text_encoder"] = {k: v for k, v in raw["text_encoder"].items() if k != "intermediate_size"}
    with pytest.raises(ConfigError, match="intermediate_size"):
        LAVTVideoConfig.from_dict(raw)


def test_convert_command_load_and_windowed_predict(tmp_path):
    """``lvseg convert lavt`` routes a video checkpoint to lavt_video; the folder loads and predicts a video in
    independent windows (the documented policy for videos longer than ``preprocessing.window``)."""
    import numpy as np

    import lvseg
    from lvseg.cli import main

    path, meta = official_checkpoint("tiny-3f", tmp_path / "checkpoint.pth")
    out = tmp_path / "lavt-video"
    assert main(["convert", "lavt", str(path), "-o", str(out), "--tokenizer", str(TOKENIZER)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "lavt_video" and config["window"] == [8, 7, 7]
    assert config["preprocessing"]["max_text_tokens"] == 22 and config["preprocessing"]["window"] == 36
    assert "gpl-3.0" in (out / "README.md").read_text()  # the weights' license travels with the folder
    model = lvseg.load(str(out), device="cpu")
    assert isinstance(model, LAVTVideo)
    golden = load_file(str(FIXTURES / "tiny-3f.safetensors"))
    lowres, _ = outputs(model, meta)
    assert_parity(lowres, {k: golden[k] for k in lowres})
    # a 5-frame video in windows of 2 frames: each window is its own clip
    model.config.image_size = 64
    video = (np.random.default_rng(0).random((5, 40, 56, 3)) * 255).astype(np.uint8)
    result = model.predict(video, "the dog on the left", window=2)
    assert tuple(result.masks.shape) == (5, 40, 56) and result.masks.dtype == torch.bool
    whole = model.predict(video, "the dog on the left", window=0)
    first = model.predict(video[:2], "the dog on the left", window=0)
    assert torch.equal(result.masks[:2], first.masks)  # window 1 = the first two frames alone
    assert tuple(whole.masks.shape) == (5, 40, 56)
    # a video checkpoint with an image entry name is refused
    with pytest.raises(CheckpointError, match="is an image LAVT model"):
        from lvseg.models.lavt.convert import convert_to_folder

        convert_to_folder(path, tmp_path / "x", tokenizer=str(TOKENIZER), name="lavt-swin-b.refcoco")
    with pytest.raises(CheckpointError, match="image backbone"):
        from lvseg.models.lavt.convert import convert_to_folder

        convert_to_folder(path, tmp_path / "y", tokenizer=str(TOKENIZER), backbone="swin-t")


def test_registry_entries_of_the_released_video_checkpoints():
    from lvseg.registry import get_entry, list_models

    names = list_models("lavt-video-*")
    assert len(names) == 12  # Video Swin-T/S/B x (ytvos, a2d, a2d-scratch, refcoco-pretrain)
    ytvos = get_entry("lavt-video-swin-b")
    assert ytvos.name == "lavt-video-swin-b.ytvos" and ytvos.family == "lavt"
    assert {m.metric: m.value for m in ytvos.paper_metrics} == {"J&F": 64.90, "J": 62.22, "F": 67.58}
    scratch = get_entry("lavt-video-swin-t.a2d-scratch")
    assert {m.metric: m.value for m in scratch.paper_metrics} == {"oIoU": 74.4, "mIoU": 65.9}
    for name in names:
        entry = get_entry(name)
        assert entry.license == "gpl-3.0" and entry.hub_revision is None and entry.source is not None
        assert entry.source.url.startswith("https://cloud.tsinghua.edu.cn/d/") and entry.source.sha256 is None
        assert entry.config == {"architecture": "lavt_video"}
        assert all("README" in m.source for m in entry.paper_metrics)
    assert not get_entry("lavt-video-swin-s.refcoco-pretrain").paper_metrics


def test_loss_decreases_on_a_fixed_batch():
    """The official video objective (LAVT-RS losses.cross_entropy_loss: 2-class CE with class weights 0.9 / 1.1 on
    the full-size logits of every frame) goes down on one fixed batch: gradients reach the network end to end."""
    torch.manual_seed(0)
    model = LAVTVideo(small_config(), tokenizer=tokenizer()).train()
    frames = torch.randn(2, 3, 3, 32, 32)
    target = torch.zeros(2, 3, 32, 32, dtype=torch.long)
    target[0, :, 4:20, 6:22] = 1  # a square for the dog, another place for the man
    target[1, :, 16:30, 2:12] = 1
    frames[0, :, 0, 4:20, 6:22] += 1.5
    frames[1, :, 1, 16:30, 2:12] += 1.5
    texts = ["the dog on the left", "the man riding a bike"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
    weight = torch.tensor([0.9, 1.1])
    losses = []
    for _ in range(12):
        logits = model(frames, texts)  # [B, T, 2, H, W]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1), weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    grads = [p.grad for n, p in model.named_parameters() if n.startswith(("fusions.0.", "text_encoder.encoder"))]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_bfloat16_segment_runs_and_agrees():
    """``lvseg.load(..., dtype=torch.bfloat16)``: the square resize runs in float32 (the antialiased kernel has no
    bfloat16 CPU implementation) and the masks follow the float32 ones."""
    torch.manual_seed(0)
    model = LAVTVideo(small_config(), tokenizer=tokenizer()).eval()
    frames = torch.randn(1, 2, 3, 40, 56)
    logits, _ = model.segment(frames, ["the dog"])
    half, scores = model.to(torch.bfloat16).segment(frames.to(torch.bfloat16), ["the dog"])
    assert half.dtype == torch.bfloat16 and scores.dtype == torch.float32
    assert ((half > 0) == (logits > 0)).float().mean() > 0.9
