"""A converted or loaded model always has the tokenizer its text encoder needs (issue 14, item 2).

transformers 5 does not raise when tokenizer files are missing: ``RobertaTokenizerFast.from_pretrained`` on an
empty folder, or on ``roberta-base`` offline with an empty cache, returns a 5-token tokenizer that turns any
sentence into ``<s></s>`` (ids 2, 3), and ``AutoTokenizer`` on a model folder that lost ``tokenizer.json`` does
the same. A model with such a tokenizer runs and ignores its text, so lvseg refuses it with a TokenizerError.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lvseg.cli import main
from lvseg.errors import CheckpointError, TokenizerError
from lvseg.hub import PACKAGE_ROOT, from_pretrained
from lvseg.models.layers.text import PROBE_SENTENCE, ROBERTA_BASE_CONFIG, tokenizer_problems

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from test_referformer import TOKENIZER, official_checkpoint  # noqa: E402

BUNDLED = PACKAGE_ROOT / "assets" / "referformer-tiny-shapes"
TINY_TEXT = dict(ROBERTA_BASE_CONFIG, vocab_size=400)  # the fixture tokenizer's size (tests' tiny RoBERTa)


def fixture_tokenizer():
    from transformers import RobertaTokenizerFast

    return RobertaTokenizerFast.from_pretrained(str(TOKENIZER))


@pytest.fixture(scope="module")
def r50_checkpoint(tmp_path_factory) -> Path:
    path, _ = official_checkpoint("r50", tmp_path_factory.mktemp("r50") / "checkpoint.pth")
    return path


@pytest.fixture(scope="module")
def mttr_checkpoint(tmp_path_factory) -> Path:
    from test_mttr_parity import official_state

    path = tmp_path_factory.mktemp("mttr") / "official.pth.tar"
    torch.save({"epoch": 1, "model_state_dict": official_state()}, path)
    return path


# ------------------------------------------------------------------------------------------ the check itself
def test_the_fixture_and_bundled_tokenizers_fit_their_text_encoders():
    from transformers import AutoTokenizer

    assert tokenizer_problems(fixture_tokenizer(), TINY_TEXT) == []
    import json

    text = json.loads((BUNDLED / "config.json").read_text())["text_encoder"]
    assert tokenizer_problems(AutoTokenizer.from_pretrained(str(BUNDLED)), text) == []


def test_an_empty_tokenizer_is_named_with_every_problem(tmp_path):
    from transformers import RobertaTokenizerFast

    empty = RobertaTokenizerFast.from_pretrained(str(tmp_path))  # transformers 5: no error, 5 tokens
    problems = " | ".join(tokenizer_problems(empty, ROBERTA_BASE_CONFIG))
    assert "it has 5 tokens but the text encoder's embedding has 50265 rows" in problems
    assert "<s>=2 (expected 0)" in problems and "<pad>=0 (expected 1)" in problems
    assert "encodes to special tokens only" in problems


def test_special_tokens_in_another_order_and_wrong_size_are_refused(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PROBE_SENTENCE] * 4, vocab_size=300, min_frequency=1,
                            special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<mask>"])  # <pad> first
    bpe.save_model(str(tmp_path))
    swapped = RobertaTokenizerFast.from_pretrained(str(tmp_path))
    problems = " | ".join(tokenizer_problems(swapped, TINY_TEXT))
    assert "<s>=1 (expected 0)" in problems and "<pad>=0 (expected 1)" in problems
    assert f"it has {len(swapped)} tokens but the text encoder's embedding has 400 rows" in problems
    assert "not wrapped in <s> ... </s>" in problems


def test_an_object_that_is_not_a_tokenizer_is_refused():
    assert "cannot encode text" in tokenizer_problems(object(), TINY_TEXT)[0]


# ------------------------------------------------------------------------------------------ converters
def test_convert_offline_without_roberta_base_fails_fast_with_the_fix(r50_checkpoint, tmp_path):
    """HF_HUB_OFFLINE=1 and an empty Hugging Face cache: before, `lvseg convert` exited 0 with a 5-token tokenizer."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lvseg.cli", "convert", "referformer", str(r50_checkpoint),
                           "-o", str(out)], env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "roberta-base (Hugging Face Hub or cache)" in proc.stderr and "it has 5 tokens" not in proc.stderr
    assert "--tokenizer DIR" in proc.stderr and "hf download roberta-base" in proc.stderr
    assert not out.exists()
    assert elapsed < 120, elapsed  # imports and the tokenizer only (seconds); not the minutes of a conversion


@pytest.mark.parametrize("family", ["referformer", "mttr"])
def test_convert_with_an_empty_tokenizer_folder_fails(family, r50_checkpoint, mttr_checkpoint, tmp_path, capsys):
    empty = tmp_path / "tokenizer"
    empty.mkdir()
    checkpoint = r50_checkpoint if family == "referformer" else mttr_checkpoint
    out = tmp_path / "out"
    assert main(["convert", family, str(checkpoint), "-o", str(out), "--tokenizer", str(empty)]) == 1
    err = capsys.readouterr().err
    assert f"the tokenizer from --tokenizer {empty} is not the one" in err
    assert "encodes to special tokens only" in err and "--tokenizer DIR" in err
    assert not out.exists()


@pytest.mark.parametrize("family", ["referformer", "mttr"])
def test_the_tokenizer_is_checked_before_the_checkpoint_is_read(family, tmp_path):
    """An unreadable checkpoint with an empty tokenizer folder: the tokenizer error comes first."""
    import importlib

    convert_to_folder = importlib.import_module(f"lvseg.models.{family}.convert").convert_to_folder
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="encodes to special tokens only"):
        convert_to_folder(garbage, tmp_path / "out", tokenizer=tmp_path / "empty")
    with pytest.raises(TokenizerError, match="does not exist"):
        convert_to_folder(garbage, tmp_path / "out", tokenizer=tmp_path / "missing")
    with pytest.raises(CheckpointError, match="cannot load .*garbage.pth: it is not a PyTorch checkpoint"):  # a good tokenizer: now the checkpoint is read
        convert_to_folder(garbage, tmp_path / "out", tokenizer=TOKENIZER)


@pytest.mark.parametrize("family", ["referformer", "mttr"])
def test_convert_refuses_a_tokenizer_of_another_vocabulary_size(family, r50_checkpoint, mttr_checkpoint, tmp_path):
    """The bundled Shapes tokenizer (394 tokens, right special tokens) against a 400-row embedding."""
    import importlib

    from transformers import AutoTokenizer

    convert_to_folder = importlib.import_module(f"lvseg.models.{family}.convert").convert_to_folder
    shapes = AutoTokenizer.from_pretrained(str(BUNDLED))
    checkpoint = r50_checkpoint if family == "referformer" else mttr_checkpoint
    with pytest.raises(TokenizerError, match=f"it has {len(shapes)} tokens but the text encoder's embedding has "
                                             "400 rows"):
        convert_to_folder(checkpoint, tmp_path / "out", tokenizer=shapes)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ from_pretrained / load
@pytest.fixture
def bundled_copy(tmp_path) -> Path:
    return Path(shutil.copytree(BUNDLED, tmp_path / "model"))


def test_load_refuses_a_folder_whose_tokenizer_does_not_match_the_embedding(bundled_copy):
    import lvseg

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bundled_copy / name).unlink()
    fixture_tokenizer().save_pretrained(str(bundled_copy))  # 400 tokens; the bundled embedding has 394 rows
    with pytest.raises(TokenizerError, match="it has 400 tokens but the text encoder's embedding has 394 rows") as err:
        lvseg.load(str(bundled_copy), device="cpu")
    assert str(bundled_copy) in str(err.value) and "lacks its tokenizer files or holds the wrong ones" in str(err.value)


def test_from_pretrained_refuses_a_folder_that_lost_its_tokenizer_files(bundled_copy):
    (bundled_copy / "tokenizer.json").unlink()  # transformers 5 would build an empty tokenizer from the config
    with pytest.raises(TokenizerError, match="it has 5 tokens"):
        from_pretrained(bundled_copy, device="cpu")
    (bundled_copy / "tokenizer_config.json").unlink()  # before: loaded with model.tokenizer = None
    with pytest.raises(TokenizerError, match="needs a tokenizer but .* has none of tokenizer_config.json"):
        from_pretrained(bundled_copy, device="cpu")


def test_a_good_folder_still_loads_with_its_tokenizer(bundled_copy):
    model = from_pretrained(bundled_copy, device="cpu")
    ids = model.tokenizer(PROBE_SENTENCE)["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and len(ids) > 2 and 3 not in ids


# ------------------------------------------------------------------------------------------ training
class _OneSample:
    """A dataset that must not be read: the tokenizer is refused before training starts."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        raise AssertionError("training started with a tokenizer that does not fit the text encoder")


def test_train_refuses_a_tokenizer_that_does_not_fit_the_text_encoder(tmp_path):
    from transformers import RobertaTokenizerFast

    import lvseg
    from lvseg.train.presets import shapes_tiny_config

    empty = RobertaTokenizerFast.from_pretrained(str(tmp_path))  # what an offline roberta-base load returns
    with pytest.raises(TokenizerError, match=r"tokenizer= \(or the model's own\).*it has 5 tokens"):
        lvseg.train(model=shapes_tiny_config(400, size=32), tokenizer=empty, train_data=_OneSample(),
                    output_dir=tmp_path / "run", max_steps=1, device="cpu")
    with pytest.raises(TokenizerError, match="it has 400 tokens but the text encoder's embedding has 394 rows"):
        lvseg.train(model=shapes_tiny_config(394, size=32), tokenizer=fixture_tokenizer(), train_data=_OneSample(),
                    output_dir=tmp_path / "run2", max_steps=1, device="cpu")


def test_old_format_checkpoints_are_still_read(tmp_path):
    """The converters read checkpoints memory-mapped (so the tokenizer's size check comes in seconds); a file in
    torch's legacy (pre-zip) format cannot be mapped and is read whole."""
    from lvseg.models.convert_utils import read_official_checkpoint

    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    for name, zipped in (("new.pth", True), ("legacy.pth", False)):
        torch.save(state, tmp_path / name, _use_new_zipfile_serialization=zipped)
        loaded = read_official_checkpoint(tmp_path / name, "a test checkpoint")
        assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], state["model"]["w"])


def test_saving_a_text_model_without_tokenizer_warns_and_the_folder_is_refused(tmp_path, caplog):
    """The weights are still written (no lost work), with a warning; loading names the missing files."""
    from lvseg.models.referformer.model import ReferFormer
    from lvseg.train.presets import shapes_tiny_config

    model = ReferFormer(shapes_tiny_config(394, size=32))
    with caplog.at_level("WARNING", logger="lvseg.hub"):
        folder = model.save_pretrained(tmp_path / "m")
    assert "has a text encoder but no tokenizer" in caplog.text and (folder / "model.safetensors").is_file()
    with pytest.raises(TokenizerError, match="has none of tokenizer_config.json"):
        from_pretrained(folder, device="cpu")
    model.tokenizer = fixture_tokenizer()  # 400 tokens for a 394-row embedding: saved, refused on load
    with pytest.raises(TokenizerError, match="it has 400 tokens but the text encoder's embedding has 394 rows"):
        from_pretrained(model.save_pretrained(tmp_path / "m2"), device="cpu")


def test_a_damaged_tokenizer_file_is_a_tokenizer_error(bundled_copy):
    """Before: a raw JSONDecodeError (truncated file) or KeyError (another schema) from transformers."""
    text = (bundled_copy / "tokenizer.json").read_text()
    for damaged in (text[: len(text) // 2], '{"version": "1.0", "model": {"type": "Nope"}}'):
        (bundled_copy / "tokenizer.json").write_text(damaged)
        with pytest.raises(TokenizerError, match=f"cannot load the tokenizer in {bundled_copy}"):
            from_pretrained(bundled_copy, device="cpu")
