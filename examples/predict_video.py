"""Segment the objects that expressions refer to in a video, and write an overlay video and PNG masks.

    python examples/predict_video.py clip.mp4 "the man riding a bike" "the red car" --model referformer-swin-l

``--model`` takes a registry name (``lvseg list``), ``hf-hub:org/repo`` or a local model folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import lvseg
from lvseg.predictor import save_overlay


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", help="video file or folder of frames")
    parser.add_argument("texts", nargs="+", help="referring expressions")
    parser.add_argument("--model", required=True, help="registry name, hf-hub:org/repo or folder")
    parser.add_argument("--output", default="predictions", help="output folder")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    model = lvseg.load(args.model, device=args.device)
    results = model.predict(args.video, args.texts)  # one decode for all expressions
    out = Path(args.output)
    for i, result in enumerate(results):
        # replaces the folder of an earlier run as a whole (no stale PNGs of a longer video are left)
        result.save_pngs(out / f"expression_{i}", overwrite=True)
        logging.info("%r: mean score %.3f over %d frames", result.text, float(result.scores.mean()), len(result))
    save_overlay(results, out / "overlay.mp4")
    logging.info("wrote %s", out)


if __name__ == "__main__":
    main()
