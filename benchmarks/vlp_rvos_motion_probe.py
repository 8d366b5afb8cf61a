"""Where is an object's motion readable in the tiny Shapes VLP-RVOS? A linear probe of each object's motion.

    python benchmarks/vlp_rvos_motion_probe.py --model runs/vlp-ground/model/best
    python benchmarks/vlp_rvos_motion_probe.py --model runs/vlp-ground/model/best --num-train 400 --num-test 100

For every object of the first ``--num-train`` Shapes training videos (seed 0, split train) and the first
``--num-test`` held-out ones (seed 1, split valid), the first clip (``clip_frames`` = 4 frames, 96 x 96) is run
through the model with the text "the object", and features of the object are read at several depths: the mean
over the cells its mask covers (at least 30 % of a patch) in each frame. A softmax regression (standardised
features, Adam, full batch) is trained to tell the object's motion (one of :data:`lvseg.data.shapes.MOTIONS`:
left, right, up, down, still, bouncing) on the training objects and scored on the held-out ones.

Features: ``centroid`` (the object's pixel centroid in each of the 4 frames, from the id maps: what a perfect
position encoder would give), ``vision_layer<i>`` (the frozen CLIP image tower's patch tokens after layer i, the 4
frames concatenated), ``projected`` (the projected patch tokens the head's pixel-text similarity reads, 4 frames
concatenated), ``volume`` (the volume that the mask decoder reads, after spatial-temporal reasoning, averaged
over the 4 frames: a token that has seen the clip could hold the motion itself) and ``volume_frames`` (the same, the
4 frames concatenated: motion as a change of place from frame to frame). ``majority``: always answering the most frequent class.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def object_features(model, seed: int, split: str, count: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    from lvseg.data.shapes import MOTIONS, make_video
    from lvseg.models.vlp_rvos.backbones import clip_patch_features
    from lvseg.train.shapes_clip import normalise_frames, referent_coverage

    clip, patch, frames_per_clip = model.backbone.clip, model.backbone.patch_size, model.config.clip_frames
    captured: dict[str, torch.Tensor] = {}
    hook = model.segDecoder.register_forward_hook(lambda m, i, o: captured.__setitem__("volume", i[0]))
    rows: dict[str, list[torch.Tensor]] = {}
    labels = []
    try:
        for index in range(count):
            video, frames, ids = make_video(seed, split, index, 8, 96, 96)
            pixels = normalise_frames(np.stack(frames[:frames_per_clip]))  # [T, 3, 96, 96]
            with torch.no_grad():
                model(pixels[None], ["the object"])
                volume = captured["volume"][:, :-1].flatten(2).transpose(1, 2)  # [T, P, d] (last channel: similarity)
                states = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
                projected = clip_patch_features(clip, pixels)  # [T, P, E]
            for obj in video.objects:
                cover = [
                    torch.from_numpy(referent_coverage(ids[t], {obj.obj_id}, patch)) >= 0.3 for t in range(len(pixels))
                ]
                if not all(bool(c.any()) for c in cover):
                    continue  # hidden in some frame
                weights = [c.float() / c.float().sum() for c in cover]

                def per_frame(tokens: torch.Tensor, weights: list[torch.Tensor] = weights) -> torch.Tensor:
                    return torch.stack([w @ tok for w, tok in zip(weights, tokens)])  # [T, P, C] -> [T, C]

                feats = {
                    "centroid": torch.tensor(
                        [
                            [float(np.nonzero(ids[t] == obj.obj_id)[k].mean()) for k in (0, 1)]
                            for t in range(len(pixels))
                        ]
                    ).flatten(),
                    **{f"vision_layer{i}": per_frame(h[:, 1:]).flatten() for i, h in enumerate(states) if i > 0},
                    "projected": per_frame(projected).flatten(),
                    "volume": per_frame(volume).mean(0),
                    "volume_frames": per_frame(volume).flatten(),
                }
                for name, value in feats.items():
                    rows.setdefault(name, []).append(value)
                labels.append(MOTIONS.index(obj.motion))
    finally:
        hook.remove()
    return {k: torch.stack(v) for k, v in rows.items()}, torch.tensor(labels)


def probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    classes: int,
    steps: int = 400,
) -> float:
    """Held-out accuracy of a softmax regression on standardised features."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(x_train.shape[1], classes, generator=generator) * 0.01).requires_grad_()
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(x_train @ weight + bias, y_train).backward()
        optimizer.step()
    with torch.no_grad():
        return float(((x_test @ weight + bias).argmax(1) == y_test).double().mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a saved tiny Shapes VLP-RVOS folder (a run's best/ or final/)")
    ap.add_argument("--num-train", type=int, default=400, help="training videos whose objects fit the probe")
    ap.add_argument("--num-test", type=int, default=100, help="held-out videos whose objects score it")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lvseg
    from lvseg.data.shapes import MOTIONS

    model = lvseg.load(args.model).eval()
    if not hasattr(model, "backbone") or not hasattr(model.backbone, "clip"):
        raise SystemExit(f"{args.model} is not a VLP-RVOS on a CLIP backbone (the tiny Shapes VLP-RVOS)")
    train, y_train = object_features(model, 0, "train", args.num_train)
    test, y_test = object_features(model, 1, "valid", args.num_test)
    results = {
        "model": args.model,
        "objects": {"train": len(y_train), "test": len(y_test)},
        "majority": float(torch.bincount(y_test, minlength=len(MOTIONS)).max() / len(y_test)),
        "accuracy": {k: probe(train[k], y_train, test[k], y_test, len(MOTIONS)) for k in train},
        "command": "python benchmarks/vlp_rvos_motion_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(
        f"{results['objects']['train']} training / {results['objects']['test']} held-out objects; "
        f"majority {100 * results['majority']:.1f}%"
    )
    for name, accuracy in results["accuracy"].items():
        print(f"{name:15s} held-out motion accuracy {100 * accuracy:5.1f}%")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
