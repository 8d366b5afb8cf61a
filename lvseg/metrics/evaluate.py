"""``lvseg.evaluate``: run a model over a benchmark dataset and score it with the benchmark's official protocol.

The loop is resumable: each sample's prediction is written to ``<output_dir>/predictions/<key>.npz`` (atomically)
as soon as it is computed, and a run started again with the same ``output_dir`` reads those files instead of
running the model again. Scoring happens at the end, from the stored predictions, so an interrupted evaluation
gives exactly the numbers of an uninterrupted one.

The command line (``lvseg evaluate``) calls :func:`main_cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DatasetError, InvalidInputError, LVSegError
from ..utils import atomic_path, atomic_write_text
from .base import Evaluator
from .referring import LAVTEvaluator, LocaterEvaluator, MTTREvaluator
from .refdavis import RefDAVIS17Evaluator
from .rvos import ExpressionJF, SubmissionWriter

__all__ = [
    "PROTOCOL_NAMES",
    "DATASET_PROTOCOLS",
    "evaluate",
    "make_evaluator",
    "benchmark_name",
    "infer_protocol",
    "build_dataset",
    "main_cli",
]

logger = logging.getLogger(__name__)

# protocol -> (benchmark name shown in tables, what it reproduces)
PROTOCOL_NAMES: dict[str, str] = {
    "ytvos": "Ref-YouTube-VOS",
    "mevis": "MeViS",
    "refdavis": "Ref-DAVIS17",
    "a2d": "A2D-Sentences",
    "jhmdb": "JHMDB-Sentences",
    "a2d+": "A2D-S+",
    "refcoco": "RefCOCO",
}

# dataset class name (lvseg.data) -> protocol
DATASET_PROTOCOLS: dict[str, str] = {
    "RefYouTubeVOS": "ytvos",
    "MeViS": "mevis",
    "RefDAVIS17": "refdavis",
    "A2DSentences": "a2d",
    "JHMDBSentences": "jhmdb",
    "A2DSPlus": "a2d+",
    "RefCOCO": "refcoco",
}

# names accepted on the command line for a dataset -> the lvseg.data class
_DATASET_ALIASES: dict[str, str] = {
    "ref-youtube-vos": "RefYouTubeVOS", "refyoutubevos": "RefYouTubeVOS", "ytvos": "RefYouTubeVOS",
    "mevis": "MeViS",
    "ref-davis17": "RefDAVIS17", "refdavis17": "RefDAVIS17", "refdavis": "RefDAVIS17", "davis": "RefDAVIS17",
    "a2d-sentences": "A2DSentences", "a2dsentences": "A2DSentences", "a2d": "A2DSentences",
    "jhmdb-sentences": "JHMDBSentences", "jhmdbsentences": "JHMDBSentences", "jhmdb": "JHMDBSentences",
    "a2d-s+": "A2DSPlus", "a2ds+": "A2DSPlus", "a2dsplus": "A2DSPlus", "a2d+": "A2DSPlus",
    "refcoco": "RefCOCO", "refcoco+": "RefCOCO", "refcocog": "RefCOCO",
}

_ID_KEYS = ("video", "exp_id", "obj_id", "anno_id", "instance_id", "image_id", "ref_id", "sent_id")


def infer_protocol(dataset: Any) -> str:
    """The protocol of a dataset: its ``protocol`` attribute, else from its class (see :data:`DATASET_PROTOCOLS`)."""
    protocol = getattr(dataset, "protocol", None)
    if isinstance(protocol, str) and protocol in PROTOCOL_NAMES:
        return protocol
    for cls in type(dataset).__mro__:
        if cls.__name__ in DATASET_PROTOCOLS:
            return DATASET_PROTOCOLS[cls.__name__]
    raise InvalidInputError(
        f"cannot tell which benchmark protocol {type(dataset).__name__} follows; pass protocol= one of "
        f"{sorted(PROTOCOL_NAMES)}"
    )


def _davis_root(dataset: Any, davis_root: str | Path | None) -> Path:
    candidates = [Path(davis_root)] if davis_root is not None else []
    for attr in ("davis_root", "root"):
        value = getattr(dataset, attr, None)
        if value is not None:
            candidates += [Path(value), Path(value) / "DAVIS"]
    for path in candidates:
        if (path / "Annotations_unsupervised" / "480p").is_dir():
            return path
    raise DatasetError(
        "Ref-DAVIS17 is scored on the DAVIS 2017 unsupervised annotations, and no folder holding "
        "Annotations_unsupervised/480p was found (tried: " + ", ".join(str(p) for p in candidates) + "). "
        "Extract DAVIS-2017-Unsupervised-trainval-480p.zip and pass davis_root=<its DAVIS folder>."
    )


def benchmark_name(protocol: str, dataset: Any = None) -> str:
    """The benchmark's name as papers and the registry write it (RefCOCO+/RefCOCOg from the dataset's variant)."""
    if protocol == "refcoco":
        variant = str(getattr(dataset, "dataset", "refcoco"))
        return {"refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}.get(variant, "RefCOCO")
    return PROTOCOL_NAMES[protocol]


def make_evaluator(protocol: str, dataset: Any = None, *, output_dir: str | Path | None = None,
                   davis_root: str | Path | None = None, has_ground_truth: bool = True) -> Evaluator:
    """The evaluator of a protocol (see :data:`PROTOCOL_NAMES`)."""
    if protocol not in PROTOCOL_NAMES:
        raise InvalidInputError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOL_NAMES)}")
    name = benchmark_name(protocol, dataset)
    if protocol == "refcoco" and getattr(dataset, "overlap", "lavt") != "lavt":
        logger.warning("LAVT's protocol reads REFER masks with overlap='lavt' (pixels covered by two polygon parts "
                       "are background); this dataset uses overlap=%r", getattr(dataset, "overlap", None))
    if protocol in ("ytvos", "mevis"):
        if has_ground_truth:
            return ExpressionJF(name)
        if output_dir is None:
            raise InvalidInputError(f"{name} without ground truth is scored by its server: pass output_dir= to "
                                    "write the submission")
        return SubmissionWriter(output_dir, name, top_folder="Annotations" if protocol == "ytvos" else None)
    if protocol == "refdavis":
        return RefDAVIS17Evaluator(_davis_root(dataset, davis_root))
    if protocol in ("a2d", "jhmdb"):
        return MTTREvaluator(name)
    if protocol == "a2d+":
        return LocaterEvaluator(name)
    return LAVTEvaluator(name)


def _sample_key(index: int, sample: Mapping[str, Any]) -> str:
    parts = [f"{index:07d}"]
    for key in _ID_KEYS:
        if key in sample and isinstance(sample[key], (str, int)):
            parts.append(str(sample[key]))
    key = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", key)[:150]


def _save_prediction(path: Path, masks: torch.Tensor, scores: torch.Tensor) -> None:
    m = masks.cpu().numpy().astype(bool)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, bits=np.packbits(m.reshape(-1)), shape=np.array(m.shape, dtype=np.int64),
                                scores=scores.detach().cpu().float().numpy())


def _load_prediction(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(path) as data:
        shape = tuple(int(s) for s in data["shape"])
        masks = np.unpackbits(data["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)
        return torch.from_numpy(masks), torch.from_numpy(data["scores"])


def _default_runner(model: Any) -> Callable[[Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]]:
    """Run ``model`` on one sample with :class:`lvseg.Predictor` (masks bool [T, H, W], scores [T])."""
    from ..predictor import Predictor

    predictor = Predictor(model, progress=False)

    def run(sample: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        frames = sample["frames"]
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        text = sample["text"]
        if not isinstance(text, str):
            raise InvalidInputError(f"sample['text'] must be one expression (str), got {type(text).__name__}")
        result = predictor(frames, text)
        return result.masks.bool(), result.scores.float()

    return run


def evaluate(
    model: Any,
    dataset: Any,
    *,
    protocol: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    davis_root: str | Path | None = None,
    max_samples: int | None = None,
    runner: Callable[[Mapping[str, Any]], tuple[Any, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` with the benchmark's official protocol.

    Args:
        model: an :class:`~lvseg.models.base.RVOSModel` or a name for :func:`lvseg.load`.
        dataset: a dataset of :mod:`lvseg.data` (or anything indexable whose samples are dicts with ``frames``
            ``uint8 [T, H, W, 3]``, ``text``, ground-truth ``masks`` ``bool [T, H, W]`` and the ids its protocol
            needs, see ``docs/metrics.md``).
        protocol: ``"ytvos"``, ``"mevis"``, ``"refdavis"``, ``"a2d"``, ``"jhmdb"``, ``"a2d+"`` or ``"refcoco"``;
            inferred from the dataset's class when omitted.
        output_dir: where predictions (and the results / a submission) are written; without it nothing is stored
            and nothing can be resumed.
        resume: reuse the predictions already in ``output_dir`` (an interrupted run continues where it stopped).
        progress: show a tqdm bar.
        davis_root: Ref-DAVIS17 only: the DAVIS folder with ``Annotations_unsupervised/480p``.
        max_samples: evaluate only the first samples (quick checks; the numbers are then not the benchmark's).
        runner: how to get ``(masks bool [T, H, W], scores float [T])`` for a sample; default
            :class:`lvseg.Predictor` on ``sample["frames"]`` and ``sample["text"]``.

    Returns:
        the benchmark's metrics in percent (e.g. ``{"J&F": ..., "J": ..., "F": ...}``), plus ``"benchmark"``,
        ``"protocol"``, ``"samples"``, and ``"submission"`` (a zip path) for splits scored by a server.
    """
    if isinstance(model, str):
        from ..hub import load

        model = load(model)
    protocol = protocol or infer_protocol(dataset)
    n_total = len(dataset)
    n = n_total if max_samples is None else min(n_total, int(max_samples))
    if n == 0:
        raise InvalidInputError("the dataset is empty: nothing to evaluate")

    out: Path | None = Path(output_dir) if output_dir is not None else None
    pred_dir = out / "predictions" if out is not None else None
    if out is not None:
        manifest = {"protocol": protocol, "dataset": type(dataset).__name__, "samples": n_total,
                    "split": str(getattr(dataset, "split", ""))}
        manifest_path = out / "evaluation.json"
        if manifest_path.is_file() and resume:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
            if previous != manifest:
                raise InvalidInputError(
                    f"'{out}' holds predictions of another evaluation ({previous}); use a new output_dir or "
                    "resume=False to start over"
                )
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")

    has_gt = getattr(dataset, "has_ground_truth", None)
    if has_gt is None:  # no attribute: look at the first sample
        first = dataset[0]
        has_gt = isinstance(first, Mapping) and first.get("masks") is not None
    evaluator = make_evaluator(protocol, dataset, output_dir=out, davis_root=davis_root, has_ground_truth=has_gt)
    run = runner or _default_runner(model)
    reused = 0
    bar = tqdm(range(n), desc=f"evaluating {benchmark_name(protocol, dataset)}", disable=not progress, unit="sample")
    for index in bar:
        sample = dataset[index]
        if not isinstance(sample, Mapping):
            raise InvalidInputError(f"dataset[{index}] is a {type(sample).__name__}, not a dict sample")
        path = pred_dir / f"{_sample_key(index, sample)}.npz" if pred_dir is not None else None
        if path is not None and resume and path.is_file():
            masks, scores = _load_prediction(path)
            reused += 1
        else:
            masks, scores = run(sample)
            masks = torch.as_tensor(masks).bool().cpu()
            scores = torch.as_tensor(scores).float().cpu()
            if path is not None:
                _save_prediction(path, masks, scores)
        evaluator.add_sample(sample, masks, scores)
    if reused:
        logger.info("reused %d stored prediction(s) from %s", reused, pred_dir)

    result: dict[str, Any] = {"benchmark": benchmark_name(protocol, dataset), "protocol": protocol, "samples": n}
    if isinstance(evaluator, SubmissionWriter):
        result["submission"] = str(evaluator.finalize())
    else:
        result.update(evaluator.summary())
    logger.info("%s", evaluator.format_table())
    if out is not None:
        atomic_write_text(out / "results.json", json.dumps(result, indent=2) + "\n")
    return result


def build_dataset(name: str, root: str | Path, split: str | None = None, **kwargs: Any) -> Any:
    """A :mod:`lvseg.data` dataset from a benchmark name (``mevis``, ``ref-davis17``, ``a2d-sentences``, ...)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    class_name = _DATASET_ALIASES.get(key, _DATASET_ALIASES.get(key.replace("-", "")))
    if class_name is None and name in DATASET_PROTOCOLS:
        class_name = name
    if class_name is None:
        raise InvalidInputError(f"unknown dataset {name!r}; choose one of {sorted(set(_DATASET_ALIASES))}")
    import lvseg.data as data

    cls = getattr(data, class_name, None)
    if cls is None:
        raise InvalidInputError(f"lvseg.data has no {class_name} reader in this version of lvseg")
    if key in ("refcoco", "refcoco+", "refcocog"):
        kwargs.setdefault("dataset", key)
        kwargs.setdefault("overlap", "lavt")  # LAVT's reading of REFER masks, part of its protocol
    if split is not None:
        kwargs["split"] = split
    return cls(root, **kwargs)


def _parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise InvalidInputError(f"--dataset-arg takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main_cli(argv: Sequence[str] | None = None) -> int:
    """``lvseg evaluate MODEL --dataset NAME --root DIR [--split S] [-o OUT]``: print the benchmark's table.

    The model may also be given as ``-m MODEL``.
    """
    parser = argparse.ArgumentParser(prog="lvseg evaluate", description="Evaluate a model on a benchmark with "
                                     "its official protocol (resumable when --output is given).")
    parser.add_argument("model_name", nargs="?", metavar="MODEL",
                        help="registry name, hf-hub:org/repo or local folder")
    parser.add_argument("-m", "--model", default=None, help="the same as MODEL")
    parser.add_argument("--dataset", required=True, help="mevis, ref-youtube-vos, ref-davis17, a2d-sentences, "
                        "jhmdb-sentences, a2d-s+, refcoco, refcoco+, refcocog")
    parser.add_argument("--root", required=True, help="the dataset's root folder (official layout)")
    parser.add_argument("--split", default=None, help="dataset split (default: the dataset's default)")
    parser.add_argument("-o", "--output", default=None, help="folder for predictions, results and submissions")
    parser.add_argument("--no-resume", action="store_true", help="ignore predictions already in --output")
    parser.add_argument("--davis-root", default=None, help="Ref-DAVIS17: folder with Annotations_unsupervised")
    parser.add_argument("--protocol", default=None, choices=sorted(PROTOCOL_NAMES))
    parser.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu")
    parser.add_argument("--max-samples", type=int, default=None, help="only the first N samples (smoke test)")
    parser.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra keyword for the dataset constructor (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = parser.parse_args(argv)
    args.model = args.model or args.model_name
    if not args.model:
        parser.error("give the model: lvseg evaluate MODEL --dataset NAME --root DIR")
    try:
        from ..hub import load

        load_kwargs = {"device": args.device} if args.device else {}
        model = load(args.model, **load_kwargs)
        dataset = build_dataset(args.dataset, args.root, args.split, **_parse_kv(args.dataset_arg))
        result = evaluate(model, dataset, protocol=args.protocol, output_dir=args.output,
                          resume=not args.no_resume, davis_root=args.davis_root, max_samples=args.max_samples)
    except LVSegError as exc:
        print(f"lvseg evaluate: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_result(result))
    return 0


def format_result(result: Mapping[str, Any]) -> str:
    """The dict returned by :func:`evaluate` as a small table (two decimals, as the papers print)."""
    from .base import format_table

    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and k != "samples"}
    lines = [f"{result.get('benchmark', '')}: {result.get('samples', '?')} sample(s)"]
    if metrics:
        lines.append(format_table(metrics, digits=2))
    if "submission" in result:
        lines.append(f"submission written to {result['submission']}: upload it to the benchmark server")
    return "\n".join(lines)
