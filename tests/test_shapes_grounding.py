"""The grounding pre-training of a Locater's ViT and text encoder (``lvseg.train.shapes_grounding``): it trains the
two encoders and nothing else, learns (the loss falls), is deterministic, and rejects what it cannot train."""

from __future__ import annotations

import pytest
import torch


def preset_locater():
    from lvseg.train.presets import get_preset

    torch.manual_seed(0)
    return get_preset("locater-tiny-shapes").model()


def test_trains_the_two_encoders_only_learns_and_repeats():
    from lvseg.train.shapes_grounding import pretrain_locater_grounding

    model = preset_locater()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"steps": 100, "batch_size": 16, "num_videos": 40, "num_test": 6, "seed": 3, "progress": False}
    record = pretrain_locater_grounding(model, **kwargs)
    after = model.state_dict()
    encoders = ("vision_encoder.", "lang_encoder.")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    outside = sorted(k for k in moved if not k.startswith(encoders))
    assert moved and not outside, outside
    trained = [k for k, v in before.items() if k.startswith(encoders) and v.is_floating_point()]
    assert len(moved) >= 0.9 * len(trained), (len(moved), len(trained))

    (s1, first), (s2, last) = record["loss_every_50_steps"]
    assert (s1, s2) == (50, 100) and last < 0.9 * first, record["loss_every_50_steps"]
    pointing = record["held_out_pointing"]
    assert 0.0 <= pointing["accuracy"] <= 1.0
    assert pointing["texts"] == sum(k["texts"] for k in pointing["by_kind"].values()) > 0

    again = preset_locater()
    pretrain_locater_grounding(again, **kwargs)
    assert all(torch.equal(after[k], v) for k, v in again.state_dict().items())


def test_pointing_hits_only_on_the_referent():
    from lvseg.train.shapes_grounding import _hits

    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]])  # [1, P=3, E=2]
    text = torch.tensor([[0.0, 2.0]])  # best match: patch 1
    assert _hits(patches, text, torch.tensor([[0.0, 0.5, 0.0]])).tolist() == [True]
    assert _hits(patches, text, torch.tensor([[1.0, 0.0, 1.0]])).tolist() == [False]


def test_bad_inputs_raise_clear_errors():
    from lvseg.errors import ConfigError
    from lvseg.train.shapes_grounding import pretrain_locater_grounding

    with pytest.raises(ConfigError, match="needs a Locater"):
        pretrain_locater_grounding(torch.nn.Linear(2, 2), steps=1, num_videos=2, num_test=0, progress=False)
    model = preset_locater()
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        pretrain_locater_grounding(model, steps=0, progress=False)
    with pytest.raises(ConfigError, match="grounding_weight must be >= 0"):
        pretrain_locater_grounding(model, steps=1, grounding_weight=-1.0, progress=False)
