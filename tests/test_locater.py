"""Locater against golden outputs of the official code (leonnnop/Locater 5da6daa), through the official file format.

The fixture (tests/fixtures/locater/s32.*) was produced by tests/fixtures/locater/generate_golden.py: the official
``VLFTrans`` with the released architecture (ViT-B/16 truncated to 6 blocks, 3-layer BiLSTM over a 30000-row
embedding, 3 fusion stages, both memory writers; 369 tensors) at a 32 x 32 input (2 x 2 patches, so the memories
hold 8 / 6 tokens), deterministic weights (tests/fixtures/locater/locater_weights.py), two expressions (one with
padding, one of the full 22 positions) on two videos of 12 frames, for both memory settings. The official evaluation
loop was followed: global memory from the frames the official loader samples, then one frame per step. Here the
same weights are written as an official checkpoint (flat, ``module.`` prefixes), converted with lvseg's converter and
run on the same inputs; every frame's logits, the masks and both memories after the last frame must match.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lvseg.errors import CheckpointError, ConfigError, InvalidInputError
from lvseg.models.locater.config import HEAD_MEMORY, PRE_REFACTOR_MEMORY, LocaterConfig
from lvseg.models.locater.convert import convert, convert_state_dict, convert_to_folder, infer_config, strip_prefix
from lvseg.models.locater.model import Locater, global_frame_indices

from parity import assert_parity, parity_failures, swap_weights, threshold_margin_failures

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "locater"
sys.path.insert(0, str(FIXTURES))
from locater_weights import TOKEN_IDS, expression, fill_official_state, make_frames, unpack_bits, write_vocab  # noqa: E402

META = json.loads((FIXTURES / "s32.json").read_text())
SETTINGS = {"head": HEAD_MEMORY, "pre": PRE_REFACTOR_MEMORY}
TEXTS = [expression(ids) for ids in TOKEN_IDS]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "s32.safetensors"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bert-vocab")
    write_vocab(path)
    return path


@pytest.fixture(scope="module")
def official_state() -> dict[str, torch.Tensor]:
    """The official state dict (bare keys, official order) with the fixture's weights."""
    return fill_official_state({k: tuple(v) for k, v in META["official_keys"].items()})


@pytest.fixture(scope="module")
def checkpoint(official_state, tmp_path_factory) -> Path:
    """The weights as a DDP-trained official file (flat, every key prefixed with ``module.``)."""
    path = tmp_path_factory.mktemp("locater-ckpt") / "locater.pth"
    torch.save({"module." + k: v for k, v in official_state.items()}, path)
    return path


def build(state: dict[str, torch.Tensor], config: LocaterConfig, tokenizer_dir: Path | None = None) -> Locater:
    """A model sharing ``state``'s tensors (no copy of the 840 MB of weights)."""
    with torch.device("meta"):
        model = Locater(config)
    model.load_state_dict(state, strict=True, assign=True)
    if tokenizer_dir is not None:
        from transformers import BertTokenizer

        model.tokenizer = BertTokenizer.from_pretrained(str(tokenizer_dir), do_lower_case=True)
    return model.eval()


def frames() -> torch.Tensor:
    return make_frames(META["frame_seed"], len(TOKEN_IDS), META["frames"], META["size"])


def check_against_golden(logits: torch.Tensor, local: torch.Tensor, global_mem: torch.Tensor, golden, setting: str):
    """logits [B, T, S, S] (frame by frame), the memories after the last frame."""
    size = META["size"]
    for t in range(META["frames"]):
        ours = logits[:, t]
        assert_parity({f"logits frame {t}": ours}, {f"logits frame {t}": golden[f"{setting}.logits"][t]})
        margin = 1e-4 * golden[f"{setting}.logits"][t].abs().max().item()
        gold_mask = unpack_bits(golden[f"{setting}.masks"][t], size, size)
        assert threshold_margin_failures(lambda x: torch.sigmoid(x) > 0.5, ours, gold_mask, margin) == 0
    assert_parity(
        {"local_mem": local, "global_mem": global_mem},
        {"local_mem": golden[f"{setting}.local_mem"], "global_mem": golden[f"{setting}.global_mem"]},
    )


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_converted_checkpoint_matches_official_recurrence(setting, checkpoint, golden, tokenizer_dir) -> None:
    """Both memory settings: convert the official file, run segment() on the 12 frames (the global memory from the
    frames the official loader samples), compare every frame, the masks and the memories."""
    local_size, global_size = SETTINGS[setting]
    assert META["settings"][setting] == [local_size, global_size]
    assert global_frame_indices(META["frames"], 3) == META["global_positions"]
    state, config = convert(checkpoint, local_mem_size=local_size, global_mem_size=global_size)
    assert (config.image_size, config.vision_depth, config.fusion_stages, config.vocab_size) == (32, 6, 3, 30000)
    model = build(state, config, tokenizer_dir)
    assert model.tokenize(TEXTS).tolist() == TOKEN_IDS
    video = frames()
    with torch.no_grad():
        logits, scores = model.segment(video, TEXTS)
        # the same video continued window by window (3 + 5 + 4 frames) from the state of the sampled frames
        state_ = model.init_stream_state(video[:, META["global_positions"]], TEXTS)
        parts = []
        for lo, hi in ((0, 3), (3, 8), (8, 12)):
            part, _, state_ = model.segment_window(video[:, lo:hi], TEXTS, state_)
            parts.append(part)
    assert logits.shape == (2, 12, 32, 32) and scores.shape == (2, 12)
    assert state_.local_mem is not None and state_.frames == 12
    check_against_golden(logits, state_.local_mem, state_.global_mem, golden, setting)
    check_against_golden(torch.cat(parts, dim=1), state_.local_mem, state_.global_mem, golden, setting)


def test_swapped_weights_fail_parity(official_state, golden) -> None:
    """The comparison detects a wrong mapping: the local memory's keep and write MLPs exchanged."""
    swapped = swap_weights(official_state, "localmem_writer.m_func.fc1.weight", "localmem_writer.post_func.fc1.weight")
    config = LocaterConfig(image_size=32)
    model = build(swapped, config)
    ids = torch.tensor(TOKEN_IDS)
    video = frames()
    with torch.no_grad():
        words = model.encode_text(ids)
        global_mem = model.global_memory(model.encode_frames(video[:, META["global_positions"]], words))
        local, out = None, []
        fused = model.encode_frames(video, words)
        for t in range(12):
            logits, local, _ = model.step(fused[:, t], words, global_mem, local)
            out.append(logits[:, 0])
    assert parity_failures({"last": out[-1]}, {"last": golden["head.logits"][11]})


def test_converter_prefixes_and_strictness(official_state) -> None:
    """Keys bare or with ``module.``; any missing, extra or mis-shaped tensor fails with its name (the official
    loader would silently keep random weights for a shape mismatch)."""
    mixed = {("module." + k if i % 2 else k): v for i, (k, v) in enumerate(official_state.items())}
    state = strip_prefix(mixed)
    assert list(state) == list(official_state)
    config = infer_config(state)
    assert (config.local_mem_size, config.global_mem_size) == HEAD_MEMORY  # the HEAD setting by default
    assert set(convert_state_dict(state, config)) == set(official_state)

    def error(changes: dict) -> str:
        bad = {k: v for k, v in state.items() if k not in changes}
        bad.update({k: v for k, v in changes.items() if v is not None})
        with pytest.raises(CheckpointError) as info:
            convert_state_dict(bad, config)
        return str(info.value)

    message = error({"query_generator.vis_proj.fc1.weight": torch.zeros(3072, 100)})
    assert "query_generator.vis_proj.fc1.weight" in message and "silently" in message
    message = error({"main_dec_net.q.weight": None})
    assert "lacks" in message and "main_dec_net.q.weight" in message
    assert "extra.weight" in error({"extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="twice"):
        strip_prefix({**state, "module.main_dec_net.q.bias": state["main_dec_net.q.bias"]})
    with pytest.raises(CheckpointError, match="not a tensor"):
        strip_prefix({"epoch": 3})
    with pytest.raises(CheckpointError, match="lacks"):
        infer_config({k: v for k, v in state.items() if not k.startswith("vision_encoder.pos_embed")})


def test_tokenize_truncation_and_out_of_vocabulary(official_state, tokenizer_dir, caplog) -> None:
    model = build(official_state, LocaterConfig(image_size=32), tokenizer_dir)
    long_text = expression(list(range(2000, 2030)))  # 30 words: cut to 22 positions, [SEP] kept
    ids = model.tokenize([long_text, "TOK1996 tok30100"])
    assert ids.shape == (2, 22)
    assert ids[0].tolist() == [101, *range(2000, 2020), 102]
    with caplog.at_level(logging.WARNING, logger="lvseg.models.locater.model"):
        ids = model.tokenize(["tok1996 tok30100"])
    # 30100 is past the 30000-row embedding: read as [UNK] (the official code fails with an index error)
    assert ids[0, :4].tolist() == [101, 1996, 100, 102]
    assert "tok30100" in caplog.text
    with pytest.raises(InvalidInputError, match="token ids"):
        model.encode_text(torch.tensor([[101, 30100, 102]]))


def test_predictor_streams_with_global_frames_from_the_whole_video(official_state, tokenizer_dir) -> None:
    """The Predictor reads the global-memory frames ahead and then carries the memories across windows: any
    window gives the masks of one pass over the whole video."""
    from lvseg import Predictor
    from lvseg.predictor import upsample_mask_logits

    model = build(official_state, LocaterConfig(image_size=32), tokenizer_dir)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, size=(10, 24, 40, 3), dtype=np.uint8)
    texts = TEXTS[:1]
    results = [Predictor(model, window=w, progress=False)(video, texts[0]) for w in (3, 7, 0)]
    for other in results[1:]:
        assert torch.equal(results[0].masks, other.masks)
    # the same as segment() on the whole prepared video (global frames sampled over all 10 frames)
    from lvseg.video import preprocess_frames

    pre = model.preprocessing
    size = pre.output_size(24, 40)
    x = preprocess_frames(video, size, pre.mean, pre.std, interpolation=pre.interpolation, device="cpu")
    logits, _ = model.segment(x[None], texts)
    masks, _ = upsample_mask_logits(logits[0], tuple(x.shape[-2:]), size, (24, 40), "probability-aligned")
    assert torch.equal(masks, results[0].masks)
    assert results[0].masks.shape == (10, 24, 40)


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        LocaterConfig(patch_size=8)
    with pytest.raises(ConfigError, match="multiple"):
        LocaterConfig(image_size=328)
    with pytest.raises(ConfigError, match="local_mem_size"):
        LocaterConfig(local_mem_size=0.0)
    cfg = LocaterConfig(local_mem_size=1.5, global_mem_size=2.0)
    assert (cfg.local_tokens, cfg.global_tokens) == (600, 800)
    assert LocaterConfig.from_dict(cfg.to_dict()) == cfg
    assert global_frame_indices(12, 3) == [1, 5, 9]
    assert global_frame_indices(2, 3) == [0, 0, 0]  # shorter than N1: the official loader has no frame 00000
    from lvseg.registry import get_entry

    for name in ("locater-vit-b.a2d", "locater-vit-b.a2d-plus"):  # the entries use the pre-refactor setting
        entry = get_entry(name)
        assert (entry.config["local_mem_size"], entry.config["global_mem_size"]) == PRE_REFACTOR_MEMORY


def test_convert_to_folder_and_load(checkpoint, tokenizer_dir, tmp_path) -> None:
    import lvseg

    folder = convert_to_folder(checkpoint, tmp_path / "out", tokenizer=str(tokenizer_dir))
    model = lvseg.load(str(folder))
    assert isinstance(model, Locater)
    assert model.tokenize(TEXTS).tolist() == TOKEN_IDS
    with pytest.raises(CheckpointError, match="backbone"):
        convert_to_folder(checkpoint, tmp_path / "out2", tokenizer=str(tokenizer_dir), backbone="swin-b")


def test_expressions_on_one_clip_share_one_backbone_pass(official_state) -> None:
    """Several expressions on one clip (the Predictor's expanded view, batch stride 0): the ViT, which never sees
    the text, runs once on the clip's frames (once on the sampled global-memory frames, once on the clip), and
    every expression's logits equal those of the same clip copied per expression (up to rounding relative to the
    magnitudes: a batch of another size may take another kernel)."""
    model = build(official_state, LocaterConfig(image_size=32))
    model.tokenizer = None
    clip = frames()[0, :6, :, :, :]  # [T, 3, 32, 32]
    ids = torch.tensor([*TOKEN_IDS, TOKEN_IDS[0]])
    words = model.encode_text(ids)
    expanded = clip[None].expand(len(ids), -1, -1, -1, -1)
    batches: list[int] = []
    hook = model.vision_encoder.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            shared = model.encode_frames(expanded, words)
            assert batches == [6]
            copied = model.encode_frames(expanded.contiguous(), words)
            assert batches == [6, 6 * len(ids)]
    finally:
        hook.remove()
    assert_parity({"fused": shared}, {"fused": copied}, tolerance=1e-5)
    # the first and the third expression are the same sentence: the same tokens (up to batched rounding)
    assert_parity({"fused": shared[0]}, {"fused": shared[2]}, tolerance=1e-5)


def test_segment_shares_the_backbone_pass_across_expressions(official_state, tokenizer_dir) -> None:
    """segment() / segment_window() on one clip expanded for several expressions: one ViT pass on the sampled
    global-memory frames and one on the clip (at a non-square size, so through the resize too), and the same
    logits as on the clip copied per expression; the Predictor's masks are those of one expression at a time."""
    from lvseg import Predictor

    model = build(official_state, LocaterConfig(image_size=32), tokenizer_dir)
    video = frames()[0, :5]
    clip = torch.nn.functional.interpolate(video, size=(24, 40), mode="bilinear", align_corners=False)
    texts = [*TEXTS, TEXTS[0]]
    expanded = clip[None].expand(len(texts), -1, -1, -1, -1)
    batches: list[int] = []
    hook = model.vision_encoder.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        shared, shared_scores = model.segment(expanded, texts)
        assert batches == [3, 5]
        copied, copied_scores = model.segment(expanded.contiguous(), texts)
        assert batches == [3, 5, 3 * len(texts), 5 * len(texts)]
    finally:
        hook.remove()
    assert_parity({"logits": shared, "scores": shared_scores}, {"logits": copied, "scores": copied_scores},
                  tolerance=1e-5)
    # the text-dependent part runs expression by expression: each expression's outputs are exactly its own call's
    for i, text in enumerate(texts):
        alone, alone_scores = model.segment(clip[None], [text])
        assert torch.equal(shared[i : i + 1], alone) and torch.equal(shared_scores[i : i + 1], alone_scores)
    # and so is the state carried to the next window (the memories of every expression)
    state_shared = model.segment_window(expanded[:, :3], texts)[2]
    out_shared = model.segment_window(expanded[:, 3:], texts, state_shared)
    for i, text in enumerate(texts):
        state = model.segment_window(clip[None, :3], [text])[2]
        logits, scores, after = model.segment_window(clip[None, 3:], [text], state)
        assert torch.equal(out_shared[0][i : i + 1], logits) and torch.equal(out_shared[1][i : i + 1], scores)
        assert torch.equal(out_shared[2].local_mem[i : i + 1], after.local_mem)
        assert torch.equal(out_shared[2].global_mem[i : i + 1], after.global_mem)
    assert out_shared[2].texts == tuple(texts) and out_shared[2].frames == 5
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, size=(7, 24, 40, 3), dtype=np.uint8)
    predictor = Predictor(model, window=3, progress=False)
    together = predictor(rgb, texts[:2])
    for i, text in enumerate(texts[:2]):
        alone = predictor(rgb, text)
        assert together[i].masks.shape == alone.masks.shape == (7, 24, 40)
        assert (together[i].masks != alone.masks).float().mean() < 0.01
