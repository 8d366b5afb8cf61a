"""The ``lvseg`` command line. Exit codes: 0 success, 1 a runtime error (bad input, missing weights, ...),
2 a usage error (unknown command or option)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import InvalidInputError, LVSegError
from .registry import DEFAULT_MODEL

__all__ = ["main"]

logger = logging.getLogger("lvseg")

# family -> module with convert_to_folder(checkpoint, output_dir, *, tokenizer, backbone, name)
CONVERTERS = {
    "referformer": "lvseg.models.referformer.convert",
    "mttr": "lvseg.models.mttr.convert",
    "lavt": "lvseg.models.lavt.convert",
    "locater": "lvseg.models.locater.convert",
}


def _cmd_list(args: argparse.Namespace) -> int:
    import shutil

    from .errors import ModelNotFoundError
    from .registry import entry_as_dict, format_table, list_models

    names = list_models(args.pattern or "*", published_only=args.published)
    if not names and args.pattern and not any(c in args.pattern for c in "*?["):
        # a bare architecture name ("referformer-swin-l") lists its tags ("referformer-swin-l.joint", ...)
        names = list_models(f"{args.pattern}.*", published_only=args.published)
    if not names and (args.pattern or args.published):
        which = f"matches {args.pattern!r}" if args.pattern else "is published"
        if args.pattern and args.published:
            which = f"matching {args.pattern!r} is published"
        raise ModelNotFoundError(
            f"no model {which}; run `lvseg list` to see every name (patterns are fnmatch globs, e.g. 'referformer-*')"
        )
    if args.json:
        print(json.dumps([entry_as_dict(name) for name in names], indent=2))
    else:
        width = None if args.wide else shutil.get_terminal_size().columns
        print(format_table(names, width=width))
    return 0


# written last into an `lvseg predict` output folder: marks the folder as one complete result that --overwrite
# may replace
PREDICT_MANIFEST = "lvseg-predict.json"


def _cmd_predict(args: argparse.Namespace) -> int:
    from .errors import OutputError
    from .hub import load
    from .predictor import Predictor, check_window, save_overlay
    from .utils import atomic_folder, atomic_write_text, check_output_folder
    from .video import IMAGE_EXTENSIONS, is_image_input, open_video

    # everything that can be checked without the model is checked before it loads (minutes for a large one)
    check_window(args.window, args.overlap)
    out = Path(args.output)
    used = check_output_folder(out, overwrite=args.overwrite, option="--overwrite")  # a file, read-only, in use
    if used and not (out / PREDICT_MANIFEST).is_file():
        raise OutputError(
            f"{out} holds files that `lvseg predict` did not write (no {PREDICT_MANIFEST}); --overwrite only "
            "replaces an earlier lvseg predict result: choose a new or empty folder"
        )
    # an image gets a still overlay (recognised by its name or first bytes, without decoding it)
    overlay_ext = args.overlay_ext or (".png" if is_image_input(args.video) else ".mp4")
    # The outputs go to a temporary folder beside `out` that replaces it when complete: `out` always holds one
    # whole result (the previous one until this one is written), never a mix, even after Ctrl-C.
    with atomic_folder(out, overwrite=args.overwrite, option="--overwrite") as tmp:
        model = load(args.model, revision=args.revision, device=args.device, dtype=args.dtype)
        # opening reads a video's header and first frame, or decodes an image: an overlay type that cannot hold
        # the input fails here, before the model runs
        source = open_video(args.video)
        if overlay_ext in IMAGE_EXTENSIONS and source.num_frames is not None and source.num_frames != 1:
            raise InvalidInputError(
                f"--overlay-ext {overlay_ext} writes one still image but {args.video} has {source.num_frames} "
                "frames: use --overlay-ext .mp4 (or .gif, .webm, .mkv)"
            )
        predictor = Predictor(model, window=args.window, overlap=args.overlap, progress=not args.quiet)
        results = predictor(source, list(args.text))
        summary = []
        for i, result in enumerate(results):
            item = {"text": result.text, "frames": len(result), "mean_score": round(float(result.scores.mean()), 4)}
            if "png" in args.format:
                result.save_pngs(tmp / f"expression_{i}")
                item["pngs"] = str(out / f"expression_{i}")
            if "rle" in args.format:
                name = f"expression_{i}.rle.json"
                atomic_write_text(
                    tmp / name, json.dumps({"text": result.text, "frames": result.frame_names, "rle": result.to_rle()})
                )
                item["rle"] = str(out / name)
            summary.append(item)
        if "overlay" in args.format:
            name = f"overlay{overlay_ext}"
            save_overlay(results, tmp / name, progress=False if args.quiet else None)
            for item in summary:
                item["overlay"] = str(out / name)
        manifest = {"video": str(args.video), "model": args.model, "expressions": summary}
        atomic_write_text(tmp / PREDICT_MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .hub import download, from_pretrained

    folder = download(args.model, revision=args.revision, force_download=args.force)
    from_pretrained(folder, device="cpu")  # check the files before saying they are fine
    if args.output:
        from .hub import copy_folder

        folder = copy_folder(folder, args.output)
    print(folder)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    commit = push_to_hub(
        args.directory, args.repo, revision=args.revision, private=args.private or None, commit_message=args.message
    )
    print(f"pushed {args.directory} to {args.repo} at commit {commit}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    if args.family not in CONVERTERS:
        raise InvalidInputError(f"no converter for {args.family!r}; available: {', '.join(sorted(CONVERTERS))}")
    try:
        module = importlib.import_module(CONVERTERS[args.family])
    except ModuleNotFoundError as exc:
        raise InvalidInputError(
            f"the {args.family} family is not available in lvseg {__version__} yet ({exc.name} is missing)"
        ) from exc
    if Path(args.checkpoint).is_dir():
        raise InvalidInputError(f"{args.checkpoint} is a folder: pass the official checkpoint file (.pth) itself")
    if not Path(args.checkpoint).is_file():
        raise InvalidInputError(f"checkpoint {args.checkpoint} does not exist")
    folder = module.convert_to_folder(
        args.checkpoint, args.output, tokenizer=args.tokenizer, backbone=args.backbone, name=args.name
    )
    print(f"wrote {folder}; load it with lvseg.load({str(folder)!r})")
    return 0


# Commands whose module parses its own options: command -> (module, function(argv) -> exit status, help)
DELEGATED = {
    "evaluate": ("lvseg.metrics.evaluate", "main_cli", "evaluate a model on a benchmark with its official protocol"),
    "train": ("lvseg.train.api", "main_cli", "train or fine-tune a model"),
    "demo": ("lvseg.demo", "main_cli", "run the embedded model on a generated video (offline)"),
    "app": ("lvseg.app", "main_cli", 'serve the web demo in a browser (needs pip install "lvseg[app]")'),
    "build-ops": ("lvseg.ops.build", "main", "compile the deformable attention kernels ahead of time"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvseg", description="Language-guided video segmentation model zoo.")
    parser.add_argument("--version", action="version", version=f"lvseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="show the model registry")
    p.add_argument("pattern", nargs="?", help="fnmatch pattern, e.g. 'referformer-*'")
    p.add_argument("--published", action="store_true", help="only models whose weights can be downloaded")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (with the source checkpoints)")
    p.add_argument("--wide", action="store_true", help="cells in full, however wide (default: fit the terminal)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("predict", help="segment the object an expression refers to in a video or an image")
    p.add_argument(
        "video", help="video file (mp4, webm, avi, ...), folder of frames, or one image (png, jpg, bmp, webp, tif)"
    )
    p.add_argument("text", nargs="+", help="one or more referring expressions (quote each)")
    p.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name, hf-hub:org/repo or folder (default: {DEFAULT_MODEL}, bundled)",
    )
    p.add_argument(
        "-o",
        "--output",
        default="lvseg_output",
        help="output folder, new or empty unless --overwrite (default: lvseg_output)",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")
    p.add_argument("--window", type=int, default=None, help="frames per model pass (0: whole video)")
    p.add_argument("--overlap", type=int, default=None, help="frames shared by consecutive windows")
    p.add_argument(
        "--format",
        nargs="+",
        default=["overlay", "png"],
        choices=["overlay", "png", "rle"],
        help="what to write (default: overlay png)",
    )
    p.add_argument(
        "--overlay-ext",
        default=None,
        choices=[".mp4", ".gif", ".webm", ".mkv", ".png", ".jpg", ".webp"],
        help="overlay file type (default: .png for an image, .mp4 for a video; image types need one frame)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an output folder that holds an earlier lvseg predict result"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("download", help="download a model into the Hugging Face cache and check it")
    p.add_argument("model", help="registry name or hf-hub:org/repo")
    p.add_argument("--revision", default=None)
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("-o", "--output", default=None, help="also copy the files to this folder")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("push", help="upload a model folder to the Hugging Face Hub")
    p.add_argument("directory", help="a folder written by save_pretrained or lvseg convert")
    p.add_argument("repo", help="org/name on the Hub")
    p.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    p.add_argument("--private", action="store_true")
    p.add_argument("--message", default="Upload lvseg model", help="commit message")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("convert", help="convert an official checkpoint into an lvseg model folder")
    p.add_argument("family", help=f"model family: {', '.join(sorted(CONVERTERS))}")
    p.add_argument("checkpoint", help="the official .pth file")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--backbone", default=None, help="backbone name (inferred from the keys when omitted)")
    p.add_argument("--tokenizer", default=None, help="folder with the text encoder's tokenizer files (offline)")
    p.add_argument("--name", default=None, help="registry name, for the model card's metadata")
    p.set_defaults(func=_cmd_convert)

    for name, (_, _, help_text) in DELEGATED.items():
        # listed here for `lvseg --help`; main() hands their arguments to the module unparsed
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _run(func: Callable[[], int]) -> int:
    try:
        return int(func() or 0)
    except LVSegError as exc:
        print(f"lvseg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lvseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`lvseg list | head`): stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose, argv = True, argv[1:]
    if argv and argv[0] in DELEGATED:
        module_name, function, _ = DELEGATED[argv[0]]
        _setup_logging(verbose)
        rest = argv[1:]
        return _run(lambda: getattr(importlib.import_module(module_name), function)(rest))
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(verbose or args.verbose)
    return _run(lambda: args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
