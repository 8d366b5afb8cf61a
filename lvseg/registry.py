"""The table of released models: one :class:`ModelEntry` per name.

Families declare their entries in a light module (``lvseg/models/<family>/entries.py``) that imports no model
code, so listing models is fast; the model itself is imported only when :func:`lvseg.load` builds it.

Names follow timm's ``arch.tag`` convention: ``referformer-swin-l.joint`` is the Swin-L ReferFormer trained
jointly on Ref-COCO + Ref-YouTube-VOS; a bare ``referformer-swin-l`` is the default tag of that architecture.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelNotFoundError

__all__ = [
    "PaperMetric",
    "SourceCheckpoint",
    "ModelEntry",
    "register",
    "list_models",
    "get_entry",
    "model_info",
    "format_table",
    "entry_as_dict",
]

# The model `lvseg demo` and `lvseg predict` use when none is named: bundled with the package, so it works offline.
DEFAULT_MODEL = "referformer-tiny.shapes"

# Modules that call register(); imported on first use of the registry. Families add themselves here.
ENTRY_MODULES: list[str] = []
ENTRY_MODULES.append("lvseg.models.referformer.entries")
ENTRY_MODULES.append("lvseg.models.mttr.entries")
ENTRY_MODULES.append("lvseg.models.lavt.entries")
ENTRY_MODULES.append("lvseg.models.lavt.video_entries")
ENTRY_MODULES.append("lvseg.models.vlp_rvos.entries")
ENTRY_MODULES.append("lvseg.models.locater.entries")
ENTRY_MODULES.append("lvseg.train.entries")


@dataclass(frozen=True)
class PaperMetric:
    """One number a paper or official README reports for a checkpoint (not measured by lvseg)."""

    dataset: str  # e.g. "Ref-YouTube-VOS"
    split: str  # e.g. "valid"
    metric: str  # e.g. "J&F", "mAP", "oIoU"
    value: float
    source: str  # where the number comes from, e.g. "ReferFormer README, Table 'Ref-Youtube-VOS'"

    def __str__(self) -> str:
        return f"{self.dataset} {self.split} {self.metric} {self.value:g}"


@dataclass(frozen=True)
class SourceCheckpoint:
    """The official checkpoint a registry entry is converted from."""

    url: str
    sha256: str | None = None  # only when known; never invented
    filename: str | None = None
    notes: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """A released model: what it is, where its weights live, and what its paper reports.

    ``hub_revision`` is a pinned commit of ``hub_repo`` so that a name always means the same bytes; an entry
    whose weights are not published yet has ``hub_revision=None`` and must be converted from ``source``.
    """

    name: str
    family: str  # the package under lvseg.models, e.g. "referformer"
    backbone: str
    training_data: str
    config: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)  # config.json overrides
    hub_repo: str | None = None
    hub_revision: str | None = None
    paper_metrics: tuple[PaperMetric, ...] = ()
    source: SourceCheckpoint | None = None
    license: str = "apache-2.0"
    paper: str = ""
    description: str = ""
    default: bool = False  # the entry a bare architecture name (without ".tag") points to
    bundled: str | None = None  # a folder inside the lvseg package holding the weights (embedded models)
    train_preset: str | None = None  # no official weights exist: the `lvseg train --preset` recipe that makes them

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1] if "." in self.name else ""

    @property
    def published(self) -> bool:
        return self.bundled is not None or (self.hub_repo is not None and self.hub_revision is not None)


_ENTRIES: dict[str, ModelEntry] = {}
_DEFAULTS: dict[str, str] = {}
_loaded = False


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry to the registry (families call this from their ``entries`` module)."""
    if entry.name in _ENTRIES and _ENTRIES[entry.name] != entry:
        raise ValueError(f"two different registry entries are named {entry.name!r}")
    _ENTRIES[entry.name] = entry
    if entry.default or entry.architecture not in _DEFAULTS:
        if entry.default or "." not in entry.name:
            _DEFAULTS[entry.architecture] = entry.name
    return entry


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in ENTRY_MODULES:
            importlib.import_module(module)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def list_models(pattern: str | Iterable[str] = "*", *, published_only: bool = False) -> list[str]:
    """Names of the registered models that match an ``fnmatch`` pattern (or any of several), sorted naturally.

    >>> lvseg.list_models("mttr-*")  # doctest: +SKIP
    ['mttr-swin-t.a2d', 'mttr-swin-t.a2d-w8', 'mttr-swin-t.ytvos']
    """
    _ensure_loaded()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = [
        name
        for name, entry in _ENTRIES.items()
        if any(fnmatch.fnmatchcase(name, p) for p in patterns) and (entry.published or not published_only)
    ]
    return sorted(names, key=_natural_key)


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name`` (``arch.tag``, or a bare ``arch`` meaning its default tag).

    Raises :class:`~lvseg.errors.ModelNotFoundError` with close matches when the name is unknown.
    """
    _ensure_loaded()
    if name in _ENTRIES:
        return _ENTRIES[name]
    if name in _DEFAULTS:
        return _ENTRIES[_DEFAULTS[name]]
    candidates = sorted(set(_ENTRIES) | set(_DEFAULTS))
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(
        f"unknown model {name!r}.{hint} Run `lvseg list` to see all names; a local folder or "
        "'hf-hub:org/repo' also works."
    )


def model_info(name: str) -> ModelEntry:
    """The registry entry of a model name (alias of :func:`get_entry`)."""
    return get_entry(name)


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 3, 0)] + "..."


# columns (of the table without paper metrics) that give up width first when it is wider than the terminal:
# backbone, training data, weights, family
_SHRINK_ORDER = (2, 3, 4, 1)
_METRICS = 4  # the paper-metrics column, left out of a table that does not fit (--wide and --json show it)


def format_table(names: Iterable[str] | None = None, *, width: int | None = None) -> str:
    """A plain-text table of registry entries (what ``lvseg list`` prints).

    Args:
        names: the entries to show (default: all).
        width: the widest a line may be (``lvseg list`` passes the terminal's width). A table wider than that
            leaves out the paper-metrics column, then cuts long cells of the weights, training-data, backbone and
            family columns with ``...``; the name column is never cut. ``None``: every column in full
            (``lvseg list --wide``).
    """
    _ensure_loaded()
    names = list_models() if names is None else list(names)
    header: tuple[str, ...] = ("name", "family", "backbone", "training data", "paper metrics", "weights")
    rows: list[tuple[str, ...]] = []
    for name in names:
        entry = _ENTRIES[name]
        metrics = "; ".join(str(m) for m in entry.paper_metrics) or "-"
        if entry.bundled:
            weights = "bundled with lvseg"
        elif entry.published:
            weights = f"{entry.hub_repo}@{entry.hub_revision[:8]}"  # type: ignore[index]
        elif entry.train_preset:
            weights = f"no official weights: lvseg train --preset {entry.train_preset}"
        else:
            weights = f"not on the Hub yet: lvseg convert {entry.family} ..."
        rows.append(
            (
                name + (" *" if _DEFAULTS.get(entry.architecture) == name else ""),
                entry.family,
                entry.backbone,
                entry.training_data,
                metrics,
                weights,
            )
        )

    def natural(head: tuple[str, ...], body: list[tuple[str, ...]]) -> list[int]:
        return [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    widths = natural(header, rows)
    notes = []
    if width is not None and sum(widths) + 2 * (len(widths) - 1) > width:
        keep = [i for i in range(len(header)) if i != _METRICS]
        header, rows = tuple(header[i] for i in keep), [tuple(r[i] for i in keep) for r in rows]
        widths = natural(header, rows)
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        for column in _SHRINK_ORDER:  # indices in the table without the metrics column
            if excess <= 0:
                break
            cut = min(excess, max(widths[column] - 8, 0))
            widths[column] -= cut
            excess -= cut
        header = tuple(_truncate(h, w) for h, w in zip(header, widths))
        rows = [tuple(_truncate(c, w) for c, w in zip(row, widths)) for row in rows]
        notes.append(
            "Paper metrics left out to fit the terminal"
            + (
                " and long cells cut"
                if any(c.endswith("...") and not c.endswith("lvseg convert ...") for row in rows for c in row)
                else ""
            )
            + ": `lvseg list --wide` shows every column in full, `lvseg list --json` as data."
        )
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if rows:
        lines.append(f"\n{len(rows)} model(s); * marks the default tag of an architecture.")
        lines += [textwrap.fill(note, width) if width else note for note in notes]
    else:
        lines.append("(no models registered)")
    return "\n".join(lines)


def entry_as_dict(name: str) -> dict[str, Any]:
    """Everything ``lvseg list --json`` shows of an entry: names, weights location, paper metrics, the official
    source checkpoint (URL, file name, sha256 when known) and the paper."""
    entry = get_entry(name)
    source = None
    if entry.source is not None:
        source = {
            "url": entry.source.url,
            "filename": entry.source.filename,
            "sha256": entry.source.sha256,
            "notes": entry.source.notes,
        }
    return {
        "name": entry.name,
        "family": entry.family,
        "backbone": entry.backbone,
        "training_data": entry.training_data,
        "hub_repo": entry.hub_repo,
        "hub_revision": entry.hub_revision,
        "published": entry.published,
        "bundled": entry.bundled is not None,
        "default": _DEFAULTS.get(entry.architecture) == entry.name,
        "license": entry.license,
        "paper": entry.paper,
        "source": source,
        "train_preset": entry.train_preset,
        "paper_metrics": [vars(m) for m in entry.paper_metrics],
    }
