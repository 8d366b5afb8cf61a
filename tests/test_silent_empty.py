"""Dataset readers whose file listing finds nothing fail at construction, naming the folder (issue 14, item 2:
library calls that return an empty result instead of raising).

Before: a Ref-DAVIS17 frame folder without .jpg frames surfaced at the first sample as "its frame list in the
annotations is empty"; a JHMDB-Sentences video with no .png frames (or an empty puppet mask) was dropped from
``eval_frames="all"`` without a word, changing the metric; an A2D frames folder without frames failed reading a
frame that does not exist.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from test_data_a2d_jhmdb import write_a2d, write_jhmdb
from test_data_mevis_davis import write_davis

from lvseg.data import A2DSentences, JHMDBSentences, RefDAVIS17
from lvseg.errors import DatasetError


def _empty(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.mkdir()


def test_ref_davis_frame_folder_without_frames(tmp_path: Path) -> None:
    write_davis(tmp_path)
    folder = tmp_path / "DAVIS/JPEGImages/480p/dogs-scale"
    _empty(folder)
    with pytest.raises(DatasetError, match=f"'{folder}' of video 'dogs-scale' holds no .jpg frames"):
        RefDAVIS17(tmp_path, "val")


def test_jhmdb_video_without_frames_or_masks_is_not_dropped(tmp_path: Path) -> None:
    write_jhmdb(tmp_path, {"my_video": ("wave", 6, 4), "other": ("wave", 5, 5)})
    assert len(JHMDBSentences(tmp_path, eval_frames="all")) == 9
    folder = tmp_path / "Rename_Images/wave/my_video"
    _empty(folder)
    with pytest.raises(DatasetError, match=f"'{folder}' of video 'my_video' holds no .png frames"):
        JHMDBSentences(tmp_path, eval_frames="all")
    write_jhmdb(tmp_path / "b", {"my_video": ("wave", 6, 4)})
    mask = tmp_path / "b/puppet_mask/wave/my_video/puppet_mask.mat"
    scipy.io.savemat(str(mask), {"part_mask": np.zeros((8, 8, 0), np.uint8)})
    with pytest.raises(DatasetError, match="holds no mask: video 'my_video' would add no sample"):
        JHMDBSentences(tmp_path / "b", eval_frames="all")


def test_a2d_frames_dir_without_frames(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    write_a2d(tmp_path)
    fd = tmp_path / "Release/pngs320H"
    (fd / "vidB").mkdir(parents=True)
    ds = A2DSentences(tmp_path, "test", num_frames=3, frames_dir=fd)
    with pytest.raises(DatasetError, match=f"'{fd / 'vidB'}' of video 'vidB' holds no .jpg/.png frames"):
        ds[3]  # a vidB sample (tests/test_data_a2d_jhmdb.py reads it from the same layout)


def test_meta_expressions_video_without_frames(tmp_path: Path) -> None:
    """Ref-YouTube-VOS and MeViS read meta_expressions.json through the same function."""
    from lvseg.data.ytvos import read_meta_expressions

    path = tmp_path / "meta_expressions.json"
    path.write_text(json.dumps({"videos": {"v1": {"frames": ["00000"], "expressions": {}},
                                           "v2": {"frames": [], "expressions": {"0": {"exp": "a dog"}}}}}))
    with pytest.raises(DatasetError, match="video 'v2' lists no frames"):
        read_meta_expressions(path)


def test_a2dplus_frame_count_file_that_is_not_a_dict(tmp_path: Path) -> None:
    """torch.load of vid_frame_dict.pth: a damaged file or a non-dict was a raw traceback (with PyTorch's
    weights_only advice) or a TypeError."""
    import torch
    from test_data_a2dplus_refcoco import write_a2dplus

    from lvseg.data import A2DSPlus

    write_a2dplus(tmp_path)
    path = tmp_path / "A2D_SUBSET/MUL/vid_frame_dict.pth"
    for content in (b"not a checkpoint", None):
        if content is None:
            torch.save(torch.zeros(3), path)  # loads, but is not a dict
        else:
            path.write_bytes(content)
        expected = "it is not a PyTorch checkpoint" if content else "vid_frame_dict.pth' is not a {video: number of frames}"
        with pytest.raises(DatasetError, match=expected) as err:
            A2DSPlus(tmp_path, "mul")
        assert "weights_only" not in str(err.value)


def test_a2dplus_damaged_mask_file(tmp_path: Path) -> None:
    from test_data_a2dplus_refcoco import write_a2dplus

    from lvseg.data import A2DSPlus

    write_a2dplus(tmp_path)
    (tmp_path / "A2D_SUBSET/MUL/mask/vidX_3_00002.pth").write_bytes(b"truncated")
    ds = A2DSPlus(tmp_path, "mul")
    with pytest.raises(DatasetError, match="vidX_3_00002.pth: it is not a PyTorch checkpoint") as err:
        ds[0]
    assert "weights_only" not in str(err.value)
