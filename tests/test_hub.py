"""Loading through the real huggingface_hub client against a Hub served from this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lvseg
from lvseg import hub as lvhub
from lvseg.errors import (
    CheckpointError,
    HubError,
    ModelNotFoundError,
    OfflineError,
    UnsupportedDtypeError,
    WeightsNotPublishedError,
)
from lvseg.registry import ModelEntry, PaperMetric, SourceCheckpoint, register

from hubserver import LocalHub
from toymodels import ColorModel, color_video, make_color_model

TESTS = Path(__file__).resolve().parent
REPO = "lvseg-test/color"


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture()
def two_revisions(tmp_path):
    """A local hub with REPO at two commits whose weights differ (palette rows for red and blue swapped)."""
    model_a = make_color_model()
    model_b = make_color_model()
    with torch.no_grad():
        model_b.palette[[0, 2]] = model_b.palette[[2, 0]]
    files = {}
    for label, model in (("a", model_a), ("b", model_b)):
        files[label] = folder_files(model.save_pretrained(tmp_path / label))
    with LocalHub() as server:
        rev_a = server.add_commit(REPO, files["a"])
        rev_b = server.add_commit(REPO, files["b"])
        yield server, rev_a, rev_b


@pytest.fixture()
def env(monkeypatch, tmp_path, two_revisions):
    server = two_revisions[0]
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    return tmp_path / "hf-cache"


def red_fraction(model: ColorModel) -> float:
    frames, masks = color_video(num_frames=2)
    result = model.predict(frames, "the red square", progress=False)
    return float((result.masks.numpy() == masks).mean())


def test_load_by_hf_hub_id_and_pinned_revisions(env, two_revisions):
    server, rev_a, rev_b = two_revisions
    latest = lvseg.load(f"hf-hub:{REPO}", cache_dir=env, device="cpu")
    model_a = lvseg.load(f"hf-hub:{REPO}@{rev_a}", cache_dir=env, device="cpu")
    model_b = lvseg.load(f"hf-hub:{REPO}", revision=rev_b, cache_dir=env, device="cpu")
    assert isinstance(model_a, ColorModel) and not model_a.training
    assert torch.equal(latest.palette, model_b.palette)
    assert not torch.equal(model_a.palette, model_b.palette)
    # revision a segments red exactly; revision b looks for blue when asked for red: different models
    assert red_fraction(model_a) == 1.0
    assert red_fraction(model_b) < 0.5
    with pytest.raises(HubError, match="revision"):
        lvseg.load(f"hf-hub:{REPO}@{'0' * 40}", cache_dir=env)
    with pytest.raises(HubError, match="not found"):
        lvseg.load("hf-hub:lvseg-test/nope", cache_dir=env)


def test_load_by_registry_name_uses_the_pinned_revision(env, two_revisions):
    _, rev_a, rev_b = two_revisions
    register(ModelEntry(name="test-color.pinned", family="test", backbone="none", training_data="none",
                        hub_repo=REPO, hub_revision=rev_a))
    model = lvseg.load("test-color.pinned", cache_dir=env, device="cpu")
    assert red_fraction(model) == 1.0  # rev a, although main is at rev b
    newer = lvseg.load("test-color.pinned", revision=rev_b, cache_dir=env, device="cpu")
    assert red_fraction(newer) < 0.5


def test_second_load_is_served_from_cache_with_the_server_stopped(env, two_revisions):
    server, rev_a, _ = two_revisions
    lvseg.load(f"hf-hub:{REPO}@{rev_a}", cache_dir=env, device="cpu")
    downloads = [r for r in server.requests if "/resolve/" in r[1]]
    assert downloads, "the first load must download"
    server.stop()
    model = lvseg.load(f"hf-hub:{REPO}@{rev_a}", cache_dir=env, device="cpu")
    assert red_fraction(model) == 1.0


def run_isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import toymodels, lvseg
        from lvseg.errors import LVSegError
        try:
    """) + textwrap.indent(textwrap.dedent(code), "    ") + textwrap.dedent("""
        except LVSegError as exc:
            print("ERROR", type(exc).__name__, exc)
    """)
    full_env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=120)


def test_offline_mode_with_warm_and_cold_cache(env, two_revisions, tmp_path):
    server, rev_a, _ = two_revisions
    lvseg.load(f"hf-hub:{REPO}@{rev_a}", cache_dir=env, device="cpu")  # warm the cache
    server.stop()
    warm = run_isolated(f"""
        m = lvseg.load("hf-hub:{REPO}@{rev_a}", device="cpu")
        print("LOADED", type(m).__name__)
    """, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(env))
    assert "LOADED ColorModel" in warm.stdout, warm.stderr
    cold = run_isolated(f"""
        lvseg.load("hf-hub:{REPO}@{rev_a}", device="cpu")
    """, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"))
    assert "ERROR OfflineError" in cold.stdout, cold.stdout + cold.stderr
    assert "HF_HUB_OFFLINE" in cold.stdout and "lvseg download" in cold.stdout


def test_unreachable_hub_with_cold_cache_is_a_clear_error(monkeypatch, tmp_path):
    with LocalHub() as server:
        url = server.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # nothing listens there any more
    with pytest.raises(OfflineError, match="could not reach the Hub"):
        lvseg.load(f"hf-hub:{REPO}", cache_dir=tmp_path / "cache")


def test_corrupted_weights_from_the_hub(monkeypatch, tmp_path):
    folder = make_color_model().save_pretrained(tmp_path / "m")
    files = folder_files(folder)
    files["model.safetensors"] = files["model.safetensors"][: len(files["model.safetensors"]) // 2]
    with LocalHub() as server:
        server.add_commit(REPO, files)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            lvseg.load(f"hf-hub:{REPO}", cache_dir=tmp_path / "cache")


def test_corrupted_and_missing_weights_in_a_local_folder(tmp_path):
    folder = make_color_model().save_pretrained(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        lvseg.load(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        lvseg.load(folder)
    with pytest.raises(CheckpointError, match="not an lvseg model folder"):
        lvseg.load(tmp_path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    from safetensors.torch import save_file

    folder = make_color_model().save_pretrained(tmp_path / "m")
    save_file({"palette": torch.zeros(6, 3), "backbone.extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        lvseg.load(folder)
    message = str(info.value)
    assert "missing keys (1): gain" in message
    assert "unexpected keys (1): backbone.extra.weight" in message
    save_file({"palette": torch.zeros(5, 3), "gain": torch.ones(())}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"palette: file \(5, 3\) vs model \(6, 3\)"):
        lvseg.load(folder)


def test_save_pretrained_round_trip_is_bit_identical(tmp_path):
    model = make_color_model()
    with torch.no_grad():
        model.gain.fill_(0.37)
        model.palette.add_(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    folder = model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = lvseg.load(str(folder), device="cpu")
    frames = torch.rand(2, 3, 3, 48, 64)
    texts = ["the red one", "a green thing"]
    assert torch.equal(model.segment(frames, texts)[0], loaded.segment(frames, texts)[0])
    assert loaded.config == model.config
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test-color" and config["preprocessing"]["short_side"] == 48


def test_model_card_carries_metadata(tmp_path):
    from huggingface_hub import ModelCard

    entry = ModelEntry(
        name="test-color.card", family="test", backbone="none", training_data="Shapes",
        paper_metrics=(PaperMetric("Ref-YouTube-VOS", "valid", "J&F", 64.9, "paper Table 1"),),
        source=SourceCheckpoint(url="https://example.org/ckpt.pth"), license="apache-2.0",
    )
    folder = make_color_model().save_pretrained(tmp_path / "m", entry=entry)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "lvseg"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["Ref-YouTube-VOS"]
    result = card.data.eval_results[0]
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("Ref-YouTube-VOS", "J&F", 64.9)
    assert "not re-measured by lvseg" in card.text


def test_push_to_hub_then_load(monkeypatch, tmp_path):
    model = make_color_model()
    with torch.no_grad():
        model.gain.fill_(2.5)
    folder = model.save_pretrained(tmp_path / "m")
    with LocalHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        commit = lvhub.push_to_hub(folder, "lvseg-test/pushed", token="hf_test")
        assert server.repos["lvseg-test/pushed"].refs["main"] == commit
        loaded = lvseg.load(f"hf-hub:lvseg-test/pushed@{commit}", cache_dir=tmp_path / "cache", device="cpu")
    assert loaded.gain.item() == 2.5


def test_unknown_and_unpublished_names():
    register(ModelEntry(name="test-colour-net.ytvos", family="test", backbone="none", training_data="none",
                        source=SourceCheckpoint(url="https://example.org/official.pth")))
    with pytest.raises(ModelNotFoundError, match="Did you mean: test-colour-net.ytvos"):
        lvseg.load("test-colour-net.ytvo")
    with pytest.raises(WeightsNotPublishedError) as info:
        lvseg.load("test-colour-net.ytvos")
    assert "lvseg convert test CHECKPOINT.pth" in str(info.value)
    assert "https://example.org/official.pth" in str(info.value)
    assert lvseg.list_models("test-colour-*") == ["test-colour-net.ytvos"]


def test_dtype_and_device_errors(tmp_path):
    folder = make_color_model().save_pretrained(tmp_path / "m")
    with pytest.raises(UnsupportedDtypeError, match="floating-point"):
        lvseg.load(folder, dtype=torch.int64)
    with pytest.raises(UnsupportedDtypeError, match="unknown dtype"):
        lvseg.load(folder, dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(lvseg.errors.InvalidInputError, match="no CUDA GPU"):
            lvseg.load(folder, device="cuda")
    bf16 = lvseg.load(folder, dtype="bfloat16", device="cpu")
    assert bf16.palette.dtype == torch.bfloat16
