"""The ``lvseg`` command line: list, predict, download, push, convert; help and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lvseg.cli import main

from hubserver import LocalHub
from toymodels import color_video, make_color_model

BIN = Path(sys.executable).parent


def test_console_script_help_and_exit_codes():
    out = subprocess.run([str(BIN / "lvseg"), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "predict" in out.stdout and "download" in out.stdout
    bad = subprocess.run([str(BIN / "lvseg"), "no-such-command"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    module = subprocess.run([sys.executable, "-m", "lvseg", "list"], capture_output=True, text=True, timeout=60)
    assert module.returncode == 0 and "name" in module.stdout and "family" in module.stdout


@pytest.mark.parametrize("command", ["list", "predict", "download", "push", "convert"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: lvseg " + command in capsys.readouterr().out


def test_list_json_and_pattern(capsys):
    from lvseg.registry import ModelEntry, PaperMetric, register

    register(ModelEntry(name="test-cli-net.a2d", family="test", backbone="tiny", training_data="A2D",
                        paper_metrics=(PaperMetric("A2D-Sentences", "test", "mAP", 46.1, "README"),)))
    assert main(["list", "test-cli-*", "--wide"]) == 0
    table = capsys.readouterr().out
    assert "test-cli-net.a2d" in table and "A2D-Sentences test mAP 46.1" in table and "lvseg convert test" in table
    assert main(["list", "test-cli-*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "test-cli-net.a2d" and rows[0]["published"] is False


def test_predict_writes_overlay_pngs_and_rle(tmp_path, capsys):
    from lvseg.video import write_video

    frames, masks = color_video(num_frames=6)
    video = write_video(iter(frames), tmp_path / "clip.mp4", fps=6)
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    code = main(["predict", str(video), "the red square", "the blue background", "-m", str(model_dir), "-o",
                 str(out), "--format", "overlay", "png", "rle", "-q", "--device", "cpu"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in summary] == ["the red square", "the blue background"]
    assert (out / "overlay.mp4").stat().st_size > 0
    assert len(list((out / "expression_0").glob("*.png"))) == 6
    rle = json.loads((out / "expression_1.rle.json").read_text())
    assert rle["text"] == "the blue background" and len(rle["rle"]) == 6


def test_predict_errors_exit_1(tmp_path, capsys):
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    assert main(["predict", str(tmp_path / "missing.mp4"), "red", "-m", str(model_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "missing.mp4"), "  ", "-m", str(model_dir)]) == 1
    assert main(["predict", "x.mp4", "red", "-m", "no-such-model"]) == 1
    assert "unknown model" in capsys.readouterr().err


def test_download_and_push_through_a_local_hub(tmp_path, monkeypatch, capsys):
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    with LocalHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        assert main(["push", str(model_dir), "lvseg-test/cli"]) == 0
        assert "pushed" in capsys.readouterr().out
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
        assert main(["download", "hf-hub:lvseg-test/cli", "-o", str(tmp_path / "copy")]) == 0
        assert (tmp_path / "copy" / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert main(["push", str(tmp_path), "lvseg-test/cli"]) == 1  # not a model folder
    assert "not an lvseg model folder" in capsys.readouterr().err


def test_convert_unknown_family(tmp_path, capsys):
    ckpt = tmp_path / "x.pth"
    ckpt.write_bytes(b"")
    assert main(["convert", "nosuchfamily", str(ckpt), "-o", str(tmp_path / "o")]) == 1
    assert "no converter" in capsys.readouterr().err


def test_delegated_commands_take_leading_options(tmp_path, capsys):
    # evaluate/train/demo parse their own options: `lvseg evaluate -m X ...` must reach the evaluate parser
    code = main(["-v", "evaluate", "-m", "no-such-model", "--dataset", "mevis", "--root", str(tmp_path)])
    assert code == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--help"])
    assert info.value.code == 0 and "usage: lvseg evaluate" in capsys.readouterr().out
    assert "evaluate" in subprocess.run([str(BIN / "lvseg"), "--help"], capture_output=True, text=True).stdout


def test_listing_models_does_not_import_model_code():
    code = ("import sys, lvseg; names = lvseg.list_models(); from lvseg.cli import build_parser; build_parser(); "
            "print(len(names), 'torch' in sys.modules, any(m.endswith('.model') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    count, torch_loaded, model_loaded = out.stdout.split()
    assert int(count) > 0 and torch_loaded == "False" and model_loaded == "False", out.stdout + out.stderr


def test_predict_uses_the_bundled_default_model_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    frames, _ = color_video(num_frames=3)
    video = tmp_path / "frames"
    video.mkdir()
    from PIL import Image

    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(video / f"{t}.png")
    assert main(["predict", str(video), "the red square", "-o", str(tmp_path / "out"), "-q", "--device", "cpu",
                 "--format", "rle"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[0]["frames"] == 3 and Path(summary[0]["rle"]).is_file()


def _closed_port_url() -> str:
    """An http:// address where nothing listens (the port was free a moment ago)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_push_without_network_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """`lvseg push DIR org/repo` with the Hub unreachable: rc 1 and one line naming the endpoint and the fix
    (before: a 27-frame httpx ConnectError traceback)."""
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    url = _closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["push", str(model_dir), "lvseg-test/cli"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lvseg: error: could not reach the Hub at " + url) and "Check the network" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    # a malformed repo id is named before anything is sent
    assert main(["push", str(model_dir), "a/b/c"]) == 1
    assert "'a/b/c' is not a valid Hub repo id" in capsys.readouterr().err
    # offline mode: said as such, nothing is attempted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert main(["push", str(model_dir), "lvseg-test/cli"]) == 1
    assert "offline mode is on (HF_HUB_OFFLINE=1): cannot push" in capsys.readouterr().err


@pytest.mark.parametrize("device, message", [
    ("gpu", "invalid device 'gpu'; use 'cpu', 'cuda' or 'cuda:N'"),
    ("cuda:x", "invalid device 'cuda:x'; use 'cpu', 'cuda' or 'cuda:N'"),
    ("cuda:3", "cuda:3"),
])
def test_predict_with_a_bad_device_names_it(tmp_path, capsys, device, message):
    """The exact device string is in the message (before: 'cuda' for 'cuda:3'); 'gpu' / 'cuda:x' are lvseg errors."""
    import torch

    if device == "cuda:3" and torch.cuda.is_available() and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    assert main(["predict", "x.mp4", "red", "-m", str(model_dir), "--device", device]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if device == "cuda:3":
        assert "device 'cuda:3'" in err


def test_list_pattern_without_match_is_an_error(capsys):
    """Before: "(no models registered)" and rc 0 for a pattern that matches nothing."""
    assert main(["list", "no-such-model-*"]) == 1
    captured = capsys.readouterr()
    assert "no model matches 'no-such-model-*'" in captured.err and "`lvseg list`" in captured.err
    assert captured.out == ""
    assert main(["list", "no-such-model-*", "--json"]) == 1


@pytest.mark.parametrize("columns", [80, 120])
def test_list_table_fits_the_terminal(capsys, monkeypatch, columns):
    """Before: ~330 columns whatever the terminal; now every line fits, --wide shows every column in full."""
    from lvseg.registry import list_models

    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["list"]) == 0
    table = capsys.readouterr().out
    assert max(len(line) for line in table.splitlines()) <= columns
    assert all(name in table for name in list_models())  # names are never cut
    assert "--wide" in table
    assert main(["list", "--wide"]) == 0
    wide = capsys.readouterr().out
    assert max(len(line) for line in wide.splitlines()) > columns and "paper metrics" in wide
    assert "Ref-YouTube-VOS valid J&F" in wide


def test_list_json_has_the_source_checkpoint(capsys):
    """docs/models/mttr.md sends users to `lvseg list mttr-* --json` for the official checkpoint's link."""
    assert main(["list", "mttr-swin-t.ytvos", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["source"]["url"].startswith("https://") and "paper" in row and row["default"] is True
    # an architecture name lists its tags (docs/predict.md: `lvseg list referformer-swin-l --json`)
    assert main(["list", "referformer-swin-l", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"referformer-swin-l.joint", "referformer-swin-l.ytvos"}


def test_quiet_predict_hides_every_bar(tmp_path, capsys):
    """-q hides the overlay-writing bar too (before: shown for videos of 50 frames or more)."""
    from lvseg.video import write_video

    frames, _ = color_video(num_frames=60)
    video = write_video(iter(frames), tmp_path / "clip.mp4", fps=10)
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    args = ["predict", str(video), "the red square", "-m", str(model_dir), "--format", "overlay", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "loud")]) == 0
    assert "writing overlay" in capsys.readouterr().err  # the bar this test looks for
    assert main([*args, "-o", str(tmp_path / "quiet"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "writing overlay" not in err and "segmenting" not in err
    assert (tmp_path / "quiet" / "overlay.mp4").stat().st_size > 0


def test_odd_sized_video_overlay_is_padded_but_masks_keep_the_size(tmp_path, capsys):
    """As documented (docs/predict.md): video codecs need even sizes, so an odd-sized video's .mp4 overlay is one
    pixel larger; the GIF overlay, the PNG masks and the RLE keep the original size."""
    import av
    from PIL import Image

    frames, _ = color_video(num_frames=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame[:25, :33]).save(folder / f"{t:05d}.png")  # 33 x 25, both odd
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    for ext in (".mp4", ".gif"):
        out = tmp_path / ext[1:]
        assert main(["predict", str(folder), "red", "-m", str(model_dir), "-o", str(out), "-q", "--device", "cpu",
                     "--format", "overlay", "png", "rle", "--overlay-ext", ext]) == 0
    capsys.readouterr()
    with av.open(str(tmp_path / "mp4" / "overlay.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (34, 26)
    assert Image.open(tmp_path / "gif" / "overlay.gif").size == (33, 25)
    assert Image.open(tmp_path / "mp4" / "expression_0" / "00000.png").size == (33, 25)
    assert json.loads((tmp_path / "mp4" / "expression_0.rle.json").read_text())["rle"][0]["size"] == [25, 33]


def test_commands_name_a_file_given_for_a_folder_and_back(tmp_path, capsys, monkeypatch):
    """Before: `download -o FILE` raised a raw FileExistsError, `push FILE` said the folder "does not exist" and
    `convert FAMILY FOLDER` said the checkpoint "does not exist"."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert main(["download", "referformer-tiny.shapes", "-o", str(a_file)]) == 1
    assert f"{a_file} is a file, not a folder" in capsys.readouterr().err
    assert main(["push", str(a_file), "lvseg-test/cli"]) == 1
    assert f"{a_file} is a file, not a model folder" in capsys.readouterr().err
    assert main(["convert", "referformer", str(tmp_path), "-o", str(tmp_path / "out")]) == 1
    assert f"{tmp_path} is a folder: pass the official checkpoint file" in capsys.readouterr().err


def test_push_with_a_refused_token_says_how_to_log_in(tmp_path, monkeypatch, capsys):
    """HTTP 401 from the Hub on push: one line that says to log in, not the HTTP error's traceback."""
    model_dir = make_color_model().save_pretrained(tmp_path / "model")
    with LocalHub() as server:
        server.write_token = "hf_right"
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        assert main(["push", str(model_dir), "lvseg-test/cli"]) == 1
        err = capsys.readouterr().err
        assert "refused the push to lvseg-test/cli (HTTP 401)" in err and "hf auth login" in err, err
        monkeypatch.setenv("HF_TOKEN", "hf_right")
        assert main(["push", str(model_dir), "lvseg-test/cli"]) == 0
