"""Datasets in their official on-disk layouts, joint video transforms, batching, and the procedural Shapes set.

Every dataset is a ``torch.utils.data.Dataset`` constructed as ``Cls(root, split=...)`` whose samples are plain
dicts (``frames``, ``masks``, ``text``, ``boxes``, ``valid``, ids); see ``docs/datasets.md`` for the exact keys.
"""

from lvseg.data import shapes, transforms
from lvseg.data._common import ClipSampling, RedrawInvisible, sample_frame_indices
from lvseg.data.a2d import A2DSentences
from lvseg.data.a2d_plus import A2DSPlus, JHMDBSentencesLocater
from lvseg.data.collate import ClipCollator, collate_clips
from lvseg.data.davis import RefDAVIS17
from lvseg.data.jhmdb import JHMDBSentences
from lvseg.data.mevis import MeViS
from lvseg.data.pseudo_video import PseudoVideo
from lvseg.data.refcoco import RefCOCO
from lvseg.data.ytvos import RefYouTubeVOS

__all__ = [
    "A2DSPlus",
    "A2DSentences",
    "ClipCollator",
    "ClipSampling",
    "JHMDBSentences",
    "JHMDBSentencesLocater",
    "MeViS",
    "PseudoVideo",
    "RefCOCO",
    "RedrawInvisible",
    "RefDAVIS17",
    "RefYouTubeVOS",
    "collate_clips",
    "sample_frame_indices",
    "shapes",
    "transforms",
]
