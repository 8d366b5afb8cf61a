"""VLP-RVOS backbones: CLIP (OpenAI clip / open_clip / HF layouts -> transformers CLIPModel), VLMo (lvseg's
multiway transformer and the official .pt layout), and the tiny Shapes CLIP.

The golden fixtures (tests/fixtures/vlp_backbones/) were written by generate_golden.py from the official code with
seeded random weights: OpenAI ``clip`` 1.0.1 (PyPI ``openai-clip``), open_clip_torch 3.3.0, and unilm/vlmo (with
the import shims listed in vlmo_golden.py). Outputs are compared relative to their magnitude (tests/parity.py);
each parity test is paired with one where a single swapped pair of weights fails the same comparison.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from parity import assert_parity, parity_failures
from safetensors.torch import load_file, save_file

from lvseg.errors import CheckpointError, ConfigError, InvalidInputError, TokenizerError
from lvseg.models.vlp_rvos import backbones, clip_convert, vlmo

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vlp_backbones"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _golden_clip() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = load_file(str(FIXTURES / "clip_openai.safetensors"))
    return {k[len("state.") :]: v for k, v in g.items() if k.startswith("state.")}, g


def _clip_outputs(model, g) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "image_features": backbones.clip_image_features(model, g["images"]),
            "text_features": backbones.clip_text_features(model, g["input_ids"]),
        }


# ------------------------------------------------------------------------------------------------ CLIP parity
def test_openai_clip_parity():
    state, g = _golden_clip()
    model = backbones.load_clip(state, text_num_heads=2)  # the fixture's text tower has 2 heads of 32
    assert model.config.vision_config.num_attention_heads == 2  # width 128 / 64, OpenAI's rule
    assert model.config.vision_config.image_size == 32 and model.config.vision_config.patch_size == 8
    assert model.config.text_config.eos_token_id == 59  # the last id, OpenAI's <|endoftext|>
    assert_parity(_clip_outputs(model, g), {k: g[k] for k in ("image_features", "text_features")})


def test_openai_clip_parity_catches_swapped_qk():
    state, g = _golden_clip()
    w = state["visual.transformer.resblocks.0.attn.in_proj_weight"].clone()
    d = w.shape[0] // 3
    state["visual.transformer.resblocks.0.attn.in_proj_weight"] = torch.cat([w[d : 2 * d], w[:d], w[2 * d :]])
    model = backbones.load_clip(state, text_num_heads=2)
    failures = parity_failures(_clip_outputs(model, g), {k: g[k] for k in ("image_features", "text_features")})
    assert set(failures) == {"image_features"} and failures["image_features"] > 1e-2


def test_wrong_head_count_fails_parity():
    state, g = _golden_clip()
    model = backbones.load_clip(state)  # text: 64 / 64 = 1 head, but the weights were trained with 2
    failures = parity_failures(_clip_outputs(model, g), {k: g[k] for k in ("image_features", "text_features")})
    assert set(failures) == {"text_features"}


def test_open_clip_training_checkpoint():
    """open_clip's training checkpoint: {"epoch", "name", "state_dict": {"module.<key>": ...}}, QuickGELU."""
    out = load_file(str(FIXTURES / "clip_open_clip_outputs.safetensors"))
    model = backbones.load_backbone(FIXTURES / "clip_open_clip.pt", num_heads=2)  # vision: 2 heads of 32
    assert_parity(_clip_outputs(model, out), {k: out[k] for k in ("image_features", "text_features")})


def test_open_clip_gelu_differs_from_quick_gelu():
    """The activation cannot be read from tensors: converting with the wrong one gives other features."""
    out = load_file(str(FIXTURES / "clip_open_clip_outputs.safetensors"))
    model = backbones.load_clip(FIXTURES / "clip_open_clip.pt", num_heads=2, hidden_act="gelu")
    assert parity_failures(_clip_outputs(model, out), {k: out[k] for k in ("image_features", "text_features")})


def test_torchscript_archive(tmp_path):
    """OpenAI's released files are TorchScript archives; they are read with torch.jit.load (no Python pickles)."""
    state, g = _golden_clip()

    class Holder(torch.nn.Module):
        pass

    root = Holder()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, Holder())
            mod = getattr(mod, p)
        mod.register_parameter(leaf, torch.nn.Parameter(value.clone()))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(tmp_path / "ViT-tiny.pt"))
    assert clip_convert._is_torchscript(tmp_path / "ViT-tiny.pt")
    model = backbones.load_backbone(tmp_path / "ViT-tiny.pt", text_num_heads=2)  # told from VLMo by its keys
    assert_parity(_clip_outputs(model, g), {k: g[k] for k in ("image_features", "text_features")})


def test_hf_layout_roundtrip(tmp_path):
    """A converted model saved with save_pretrained, and its state dict as one .safetensors file, load back to the
    same weights (HF layout: passed through, config.json used for the folder)."""
    state, g = _golden_clip()
    model = backbones.load_clip(state, text_num_heads=2)
    model.save_pretrained(str(tmp_path / "folder"))
    again = backbones.load_backbone(tmp_path / "folder")
    assert again.config.text_config.num_attention_heads == 2  # from config.json, not width / 64
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    hf_state = dict(model.state_dict())
    hf_state["text_model.embeddings.position_ids"] = torch.arange(12)[None]  # older transformers saved it
    save_file({k: v.contiguous() for k, v in hf_state.items()}, str(tmp_path / "clip.safetensors"))
    single = backbones.load_clip(tmp_path / "clip.safetensors", text_num_heads=2)
    assert_parity(_clip_outputs(single, g), {k: g[k] for k in ("image_features", "text_features")})
    hf_state["text_model.embeddings.position_ids"] = torch.arange(12)[None].flip(1)
    with pytest.raises(CheckpointError, match="position_ids"):
        clip_convert.convert_clip(hf_state, text_num_heads=2)


def test_clip_resized_input_equals_interpolation():
    """Converting for another input size (VLP-RVOS runs ViT-B/16 at 352 px) resizes the position grid once; the
    features equal those of the 224-style model interpolating at every call (transformers' bicubic resize)."""
    state, g = _golden_clip()
    native = backbones.load_clip(state, text_num_heads=2)
    resized = backbones.load_clip(state, text_num_heads=2, image_size=48)  # grid 4 -> 6
    assert resized.config.vision_config.image_size == 48
    assert resized.vision_model.embeddings.position_embedding.weight.shape == (37, 128)
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = backbones.clip_image_features(native, images)  # interpolates (size differs from its config)
        b = backbones.clip_image_features(resized, images)  # its own size: no interpolation
    assert_parity({"image_features": b}, {"image_features": a}, tolerance=1e-6)
    with pytest.raises(CheckpointError, match="not a multiple of the patch size"):
        clip_convert.convert_clip(state, text_num_heads=2, image_size=50)


def test_convert_to_folder(tmp_path):
    """An OpenAI-layout file -> a save_pretrained folder (with a tokenizer beside it) that loads to the same
    features; a tokenizer larger than the embedding and a non-empty output folder are refused."""
    from lvseg.errors import OutputError
    from lvseg.train.shapes_clip import shapes_clip_tokenizer

    state, g = _golden_clip()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "openai.safetensors"))
    tok = shapes_clip_tokenizer()  # fewer tokens than the fixture's 60 embedding rows
    out = clip_convert.convert_to_folder(tmp_path / "openai.safetensors", tmp_path / "clip", tokenizer=tok,
                                         text_num_heads=2)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert_parity(_clip_outputs(backbones.load_clip(out), g), {k: g[k] for k in ("image_features", "text_features")})
    assert backbones.load_clip_tokenizer(out)("the red star")["input_ids"] == tok("the red star")["input_ids"]
    with pytest.raises(OutputError, match="already holds files"):
        clip_convert.convert_to_folder(tmp_path / "openai.safetensors", out, text_num_heads=2)
    tok.add_tokens([f"extra{i}" for i in range(61 - len(tok))])
    with pytest.raises(TokenizerError, match="61 tokens but the CLIP text embedding only 60 rows"):
        clip_convert.convert_to_folder(tmp_path / "openai.safetensors", tmp_path / "c2", tokenizer=tok,
                                       text_num_heads=2)


# ------------------------------------------------------------------------------------------------ CLIP errors
def test_clip_missing_unexpected_and_shape_errors():
    state, _ = _golden_clip()
    missing = dict(state)
    del missing["visual.ln_post.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1: \['vision_model.post_layernorm.bias'\]"):
        clip_convert.convert_clip(missing)
    extra = {**state, "visual.extra_head.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"visual.extra_head.weight"):
        clip_convert.convert_clip(extra)
    bad = {**state, "ln_final.weight": torch.ones(32)}
    with pytest.raises(CheckpointError, match=r"text_model.final_layer_norm.weight: checkpoint \(32,\) vs model \(64,\)"):
        clip_convert.convert_clip(bad)
    with pytest.raises(CheckpointError, match="not divisible by 3 heads"):
        clip_convert.convert_clip(state, num_heads=3)


def test_clip_unsupported_and_unreadable(tmp_path):
    with pytest.raises(CheckpointError, match="ResNet CLIP"):
        clip_convert.detect_layout({"visual.layer1.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="unrecognised CLIP layout"):
        clip_convert.detect_layout({"backbone.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not exist"):
        backbones.load_clip(tmp_path / "nothing.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        backbones.load_clip(tmp_path / "notes.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        backbones.load_clip(tmp_path / "empty")
    with pytest.raises(TokenizerError, match="hf download openai/clip-vit-base-patch16"):
        backbones.load_clip_tokenizer(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ architectures
def test_backbone_sizes_match_official():
    """Parameter counts of the random-init architectures (meta device: no memory): the CLIPs equal the OpenAI
    ``clip`` models' (research notes: 149.62 M and 427.62 M elements incl. logit_scale); VLMo-B at 384 px has the
    shared relative-position table of (2*24-1)^2 + 3 + 2*196 + 2 = 2606 rows x 12*12 heads."""
    with torch.device("meta"):
        b16, l14 = backbones.build_backbone("clip-vit-b-16"), backbones.build_backbone("clip-vit-l-14")
        vb, vl = backbones.build_backbone("vlmo-b"), backbones.build_backbone("vlmo-l")
    assert round(sum(p.numel() for p in b16.parameters()) / 1e6, 2) == 149.62
    assert round(sum(p.numel() for p in l14.parameters()) / 1e6, 2) == 427.62
    assert tuple(vb.relative_position_bias_table.shape) == (2606, 144)
    assert tuple(vl.relative_position_bias_table.shape) == (2606, 384)
    assert [b.mlp_vl is not None for b in vl.transformer.blocks].index(True) == 21
    with pytest.raises(ConfigError, match="unknown VLP-RVOS backbone"):
        backbones.build_backbone("clip-vit-h-14")


def test_freeze():
    state, _ = _golden_clip()
    model = backbones.freeze(backbones.load_clip(state, text_num_heads=2).train())
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------------------------------------ VLMo
def _golden_vlmo() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = load_file(str(FIXTURES / "vlmo.safetensors"))
    return {k[len("state.") :]: v for k, v in g.items() if k.startswith("state.")}, g


_VLMO_OUTPUTS = ("image_tokens", "image_features", "image_vl_features", "text_tokens", "text_features",
                 "text_vl_features")


def _vlmo_outputs(model, g) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        i = model.encode_image(g["images"])
        t = model.encode_text(g["input_ids"], g["attention_mask"])
    return {
        "image_tokens": i["tokens"], "image_features": i["features"], "image_vl_features": i["vl_features"],
        "text_tokens": t["tokens"], "text_features": t["features"], "text_vl_features": t["vl_features"],
    }


def test_vlmo_parity():
    state, g = _golden_vlmo()
    model = vlmo.load_vlmo(state)
    assert (model.config.depth, model.config.num_heads, model.config.vlffn_start) == (4, 2, 2)
    assert model.config.image_size == 32 and model.config.max_text_len == 12
    assert_parity(_vlmo_outputs(model, g), {k: g[k] for k in _VLMO_OUTPUTS})


def test_vlmo_parity_catches_swapped_experts():
    state, g = _golden_vlmo()
    a, b = "transformer.blocks.1.mlp_text.fc1.weight", "transformer.blocks.1.mlp_imag.fc1.weight"
    state[a], state[b] = state[b], state[a]
    failures = parity_failures(_vlmo_outputs(vlmo.load_vlmo(state), g), {k: g[k] for k in _VLMO_OUTPUTS})
    assert {"image_tokens", "text_tokens"} <= set(failures)


def test_vlmo_official_file_layouts(tmp_path, caplog):
    """Lightning ({"state_dict"}) and DeepSpeed ({"module": {"module.<key>"}}) files, with other tasks' heads,
    the index tensors and BERT's position_ids as older files hold them."""
    state, g = _golden_vlmo()
    model = vlmo.load_vlmo(state)
    extras = {
        "pooler.dense.weight": torch.zeros(32, 32),
        "itm_score.fc.weight": torch.zeros(2, 32),
        "relative_position_index": vlmo.image_relative_position_index(4),
        "text_relative_position_index": vlmo.text_relative_position_index(12, 4),
        "text_imag_relative_position_index": vlmo.text_image_relative_position_index(12, 4),
        "text_embeddings.position_ids": torch.arange(12)[None],
    }
    torch.save({"state_dict": {**state, **extras}, "epoch": 3}, tmp_path / "lightning.pt")
    torch.save({"module": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "deepspeed.pt")
    with caplog.at_level("INFO", logger="lvseg.models.vlp_rvos.vlmo"):
        for name in ("lightning.pt", "deepspeed.pt"):
            loaded = backbones.load_backbone(tmp_path / name)
            assert isinstance(loaded, vlmo.VLMo)
            for k, v in model.state_dict().items():
                assert torch.equal(v, loaded.state_dict()[k]), (name, k)
    assert "['itm_score', 'pooler']" in caplog.text
    wrong = {**state, **extras, "relative_position_index": vlmo.image_relative_position_index(4).flip(0)}
    with pytest.raises(CheckpointError, match="relative_position_index differs"):
        vlmo.convert_vlmo(wrong)
    missing = {k: v for k, v in state.items() if k != "transformer.blocks.3.norm2_vl.bias"}
    with pytest.raises(CheckpointError, match=r"missing \['transformer.blocks.3.norm2_vl.bias'\]"):
        vlmo.convert_vlmo(missing)
    torch.save({"state_dict": {"backbone.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a VLMo checkpoint"):
        vlmo.load_vlmo(tmp_path / "other.pt")


def test_vlmo_relative_positions_and_fused_mode():
    """The index layout: image offsets, then the three cls entries; text offsets after text<->image; and the fused
    mode (text then image through the VL experts) keeps shapes and uses the padding mask."""
    idx = vlmo.image_relative_position_index(4)
    assert idx.shape == (17, 17) and idx[0, 0] == 49 + 2 and idx[0, 1] == 49 and idx[1, 0] == 50
    assert idx[1:, 1:].max() == 48 and idx[1, 1] == idx[2, 2] == 24  # zero offset sits at the table's centre
    t = vlmo.text_relative_position_index(12, 4)
    assert t[1, 1] == 52 + 196 and t[1, 2] == 52 + 197  # num_relative + 196 + (j - i)
    state, g = _golden_vlmo()
    model = vlmo.load_vlmo(state)
    with torch.no_grad():
        fused = model.encode_pair(g["input_ids"], g["attention_mask"], g["images"])
        fused_other_pad = model.encode_pair(
            g["input_ids"].masked_fill(g["attention_mask"] == 0, 7), g["attention_mask"], g["images"]
        )
    assert fused.shape == (2, 12 + 17, 32)
    # keys at padded positions are masked out: changing the padding ids changes nothing for the real tokens
    assert torch.allclose(fused[0, :6], fused_other_pad[0, :6], atol=1e-6 * fused.abs().max().item())
    with pytest.raises(InvalidInputError, match=r"resize to the config's image_size"):
        model.encode_image(torch.zeros(1, 3, 48, 48))
    with pytest.raises(InvalidInputError, match="truncate to max_text_len"):
        model.encode_text(torch.zeros(1, 13, dtype=torch.long))


def test_vlmo_resized_to_another_input_size():
    """load_vlmo(image_size=...) resamples the image-offset rows of the table (as VLP-RVOS runs VLMo-B at 352 px
    from the 384 px checkpoint): the zero offset and the cls/text rows keep their values; the model runs."""
    state, _ = _golden_vlmo()
    table = state["relative_position_bias_table"]
    small = vlmo.load_vlmo(state, image_size=24)  # grid 4 -> 3
    new = small.relative_position_bias_table.detach()
    assert new.shape == (table.shape[0] - 7 * 7 + 5 * 5, table.shape[1])
    assert torch.allclose(new[2 * 5 + 2], table[3 * 7 + 3], rtol=1e-5, atol=1e-6)  # offset (0, 0)
    assert torch.equal(new[25:], table[49:])
    assert not torch.allclose(new[0], table[0])  # the corner offsets moved: (-2, -2) is not a node
    with torch.no_grad():
        out = small.encode_image(torch.randn(1, 3, 24, 24))
    assert out["tokens"].shape == (1, 10, 32) and torch.isfinite(out["tokens"]).all()
    same = vlmo.resize_relative_position_table(table, 4, 4)
    assert torch.equal(same, table)
    with pytest.raises(ConfigError, match="not a multiple of the patch size"):
        vlmo.convert_vlmo(state, image_size=30)


def _adapter(state, image_size=None):
    """The VLP-RVOS adapter (on nn.Module: the model's VLBackbone base lives with the model) with the fixture's
    weights, loaded through load_vlmo_backbone."""
    cfg = vlmo.load_vlmo(state).config
    vision = {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
              "patch_size": 8, "image_size": 32, "vlffn_start": 2}
    adapter = vlmo.vlmo_backbone_class()(vlmo.vlmo_config_from_sizes(vision, {"vocab_size": 50,
                                                                           "max_position_embeddings": 12}))
    assert adapter.vlmo.config.vlffn_start == cfg.vlffn_start
    vlmo.load_vlmo_backbone(adapter, state)
    assert not any(p.requires_grad for p in adapter.parameters())
    return adapter.eval()


def _run_frames(adapter, pixels, extra=0):
    """The VLP-RVOS model's layer loop: frame tokens (+ ``extra`` appended prompt tokens), norm1 -> attention ->
    residual -> ffn -> residual per layer; returns the final-normed frame tokens."""
    x = adapter.embed_frames(pixels)
    n = x.shape[1]
    if extra:
        x = torch.cat([x, torch.randn(x.shape[0], extra, x.shape[2], generator=torch.Generator().manual_seed(9))], 1)
    for i in range(adapter.num_layers):
        h = adapter.norm1(i, x)
        x = x + adapter.attention(i, h, h)
        x = x + adapter.ffn(i, x)
    return adapter.vlmo.transformer.norm(x[:, :n])


def test_vlmo_vlp_rvos_adapter_matches_vlmo():
    """Driven layer by layer as VLP-RVOS does, the adapter gives VLMo's own image and text encodings (checked
    against the official golden outputs), and the sentence is VLMo's retrieval feature."""
    state, g = _golden_vlmo()
    adapter = _adapter(state)
    with torch.no_grad():
        tokens = _run_frames(adapter, g["images"])
        words, mask, sentence = adapter.encode_text(g["input_ids"], g["attention_mask"], None)
        patches = adapter.project_patches(tokens)  # shape only (the model passes un-normed tokens)
    assert_parity({"image_tokens": tokens, "text_tokens": words}, {k: g[k] for k in ("image_tokens", "text_tokens")})
    assert_parity({"text_features": torch.nn.functional.normalize(sentence, dim=-1)}, {"text_features": g["text_features"]})
    assert mask.dtype == torch.bool and patches.shape == (2, 17, 32)
    assert (adapter.vision_dim, adapter.text_dim, adapter.joint_dim, adapter.num_layers, adapter.patch_size) == (
        32, 32, 32, 4, 8)


def test_vlmo_vlp_rvos_adapter_prompts_and_grid():
    """Prompt tokens: appended image prompts change the frame tokens (they are attended) without position bias;
    text prompts after [CLS] are removed from the returned words; another frame grid uses the resampled table
    (the same as converting the checkpoint for that size)."""
    state, g = _golden_vlmo()
    adapter = _adapter(state)
    with torch.no_grad():
        plain = _run_frames(adapter, g["images"])
        prompted = _run_frames(adapter, g["images"], extra=3)
        prompts = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(3))
        words, _, sentence = adapter.encode_text(g["input_ids"], g["attention_mask"], prompts)
        words0, _, sentence0 = adapter.encode_text(g["input_ids"], g["attention_mask"], None)
        small = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(4))
        ours = _run_frames(adapter, small)
        reference = vlmo.load_vlmo(state, image_size=24).encode_image(small)["tokens"]
    assert plain.shape == prompted.shape and not torch.allclose(plain, prompted)
    assert words.shape == words0.shape == (2, 12, 32) and not torch.allclose(sentence, sentence0)
    assert_parity({"tokens": ours}, {"tokens": reference})
    other = vlmo.vlmo_backbone_class()(vlmo.vlmo_config_from_sizes(  # 16 text positions, the file has 12
        {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "patch_size": 8, "image_size": 32,
         "vlffn_start": 2}, {"vocab_size": 50, "max_position_embeddings": 16}))
    with pytest.raises(CheckpointError, match=r"does not fit this backbone.*text_embeddings.position_embeddings"):
        vlmo.load_vlmo_backbone(other, state)
    with pytest.raises(ConfigError, match="not a VLMo backbone"):
        vlmo.load_vlmo_backbone(torch.nn.Linear(2, 2), state)


# ------------------------------------------------------------------------------------------------ Shapes CLIP
def test_shapes_clip_tokenizer_layout():
    from lvseg.data.shapes import VOCABULARY
    from lvseg.train.shapes_clip import shapes_clip_tokenizer

    tok = shapes_clip_tokenizer()
    ids = tok("the big red circle")["input_ids"]
    assert ids[0] == len(tok) - 2 and ids[-1] == len(tok) - 1 == tok.eos_token_id  # OpenAI's layout: eot last
    assert tok.unk_token_id not in ids and len(ids) == 6
    assert len(tok) == len(VOCABULARY) + 4


def test_shapes_clip_learns_and_loads(tmp_path):
    """The contrastive loss falls on a fixed batch, and the saved folder loads through the backbone loader with
    the same features; retrieval's own-video hits are a subset of its hits."""
    import numpy as np
    from transformers import CLIPModel

    from lvseg.train.shapes_clip import (
        ShapesClipConfig,
        ShapesPairs,
        attribute_probe,
        contrastive_loss,
        normalise_frames,
        retrieval_accuracy,
        shapes_clip_model_config,
        shapes_clip_tokenizer,
        train_shapes_clip,
    )

    config = ShapesClipConfig(size=48, patch=12, width=32, layers=1, text_width=32, text_layers=1, embed=32)
    tok = shapes_clip_tokenizer()
    torch.manual_seed(0)
    model = CLIPModel(shapes_clip_model_config(config, tok))
    pairs = ShapesPairs(0, "train", 12, frames=2, size=48)
    frames, texts = pairs.sample(12, np.random.default_rng(0))
    enc = tok(texts, padding=True, return_tensors="pt")
    pixels = normalise_frames(frames)
    assert pixels.shape == (12, 3, 48, 48)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = contrastive_loss(model, pixels, enc["input_ids"], enc["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.9 * math.log(12)  # untrained: close to uniform over the 12 pairs
    assert losses[-1] < 0.5 * losses[0]

    config.steps, config.num_train, config.frames, config.batch, config.warmup = 3, 8, 2, 8, 1
    trained, tokenizer, record = train_shapes_clip(tmp_path / "clip", config, progress=False)
    assert len(record["loss_every_50_steps"]) == 0 and record["train_videos"] == 8
    loaded = backbones.load_backbone(tmp_path / "clip")
    assert type(loaded).__name__ == "CLIPModel"
    tok2 = backbones.load_clip_tokenizer(tmp_path / "clip")
    assert tok2("the red star")["input_ids"] == tokenizer("the red star")["input_ids"]
    test = ShapesPairs(1, "valid", 6, frames=2, size=48)
    a = retrieval_accuracy(trained, tokenizer, test)
    b = retrieval_accuracy(loaded, tok2, test)
    assert a == b
    assert 0.0 <= a["own_top1"] <= a["top1"] <= 1.0 and 0.0 < a["chance"] <= 1.0
    probe = attribute_probe(trained, tokenizer, test)
    assert set(probe) == {"color", "plural_shape", "color_shape", "size_shape", "position"}
    assert all(0.0 <= r["top1"] <= 1.0 and 0.0 <= r["chance"] <= 1.0 for r in probe.values())
    with pytest.raises(Exception, match="already holds files"):
        train_shapes_clip(tmp_path / "clip", config, progress=False)
