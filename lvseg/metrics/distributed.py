"""Evaluation on several processes: the samples are sharded across ranks, rank 0 merges and scores.

``torchrun --nproc_per_node=N -m lvseg evaluate MODEL --dataset NAME --root DIR -o OUT`` (or a multi-node torchrun,
or a script calling :func:`lvseg.evaluate` under torchrun) runs :func:`lvseg.metrics.evaluate.evaluate` on every
rank. The ranks share the output folder (on several nodes: a shared file system):

1. rank 0 removes the temporary files a killed run may have left in ``OUT/predictions``, lists the samples that
   have no stored prediction yet, and sends that list to every rank;
2. rank ``r`` of ``N`` computes the pending samples ``r, r + N, r + 2N, ...`` of that list and writes each
   prediction to ``OUT/predictions/<key>.npz`` atomically (a temporary file renamed in one step), so a rank that
   dies leaves whole files only;
3. after a barrier, rank 0 runs the single-process loop over all samples in dataset order: every prediction is
   read back from its file, so the evaluator sees exactly what a one-process run gives it, in the same order, and
   the metrics are equal bit for bit; every rank returns rank 0's result.

An interrupted run (any number of processes) is resumed by running the same command again, with any number of
processes: stored predictions are reused, not recomputed. The process group is the one already joined, or the
one torchrun's environment describes (joined with :func:`lvseg.train.distributed.init_distributed` and a long
timeout: ranks wait at the barrier for the slowest shard).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..train.distributed import DistInfo, barrier, broadcast_object, init_distributed

__all__ = [
    "EVALUATION_TIMEOUT",
    "join_process_group",
    "stored_indices",
    "remove_partial_files",
    "plan_shard",
    "run_shard",
    "share_result",
]

logger = logging.getLogger(__name__)

# how long a rank may wait for the others at a barrier: a finished rank waits for the slowest shard, and the
# others wait while rank 0 scores (torch's default, 30 min for gloo, is shorter than one Ref-YouTube-VOS shard)
EVALUATION_TIMEOUT = timedelta(hours=24)

# prediction files are "<index, 7+ digits>_<ids>.npz" (see evaluate._sample_key); atomic_path's temporary files
# are ".<name>.<random>.tmp" beside them
_STORED = re.compile(r"^(\d+)(?:_.*)?\.npz$")
_PARTIAL = re.compile(r"^\..+\.npz\..+\.tmp$")


def join_process_group(device: str | torch.device | None = None) -> DistInfo:
    """This process's place in the evaluation: the process group already joined, else the one torchrun's
    environment describes (``WORLD_SIZE`` > 1: joined now, gloo on CPU, NCCL on CUDA), else a single process.

    Args:
        device: the device the model runs on (``None``: CUDA when available). Under torchrun, CUDA means
            ``cuda:LOCAL_RANK``; the returned :class:`DistInfo` holds the device to load the model on.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        want = torch.device(device) if device is not None else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), want)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return init_distributed(device, timeout=EVALUATION_TIMEOUT)
    from ..hub import resolve_device

    return DistInfo(device=resolve_device(device))


def stored_indices(pred_dir: str | Path) -> set[int]:
    """Dataset indices whose prediction is stored in ``pred_dir`` (complete files only: temporaries are ignored)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        return set()
    out = set()
    for entry in os.scandir(pred_dir):
        match = _STORED.match(entry.name)
        if match and entry.is_file():
            out.add(int(match.group(1)))
    return out


def remove_partial_files(pred_dir: str | Path) -> int:
    """Delete the temporary files that a process killed while writing a prediction left behind; their count."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(pred_dir):
        if _PARTIAL.match(entry.name) and entry.is_file():
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:  # removed by someone else meanwhile
                pass
    if removed:
        logger.info("removed %d partial file(s) left by an interrupted run in %s", removed, pred_dir)
    return removed


def plan_shard(pred_dir: Path, num_samples: int, resume: bool, info: DistInfo) -> list[int]:
    """The dataset indices this rank computes: its share of the samples without a stored prediction.

    Rank 0 decides (one listing of the folder, after removing partial files) and sends the plan to every rank,
    so all ranks agree whatever the file system shows each of them. The pending samples are dealt round-robin
    (``pending[rank::world_size]``), which balances videos of different lengths over the ranks.
    """
    pending: list[int] | None = None
    if info.is_main:
        remove_partial_files(pred_dir)
        done = stored_indices(pred_dir) if resume else set()
        pending = [i for i in range(num_samples) if i not in done]
        if done:
            logger.info(
                "%d of %d prediction(s) already stored in %s: reused",
                num_samples - len(pending),
                num_samples,
                pred_dir,
            )
    pending = broadcast_object(pending)
    assert pending is not None  # rank 0 always sends a list
    mine = pending[info.rank :: info.world_size]
    logger.info("rank %d of %d: %d of the %d pending sample(s)", info.rank, info.world_size, len(mine), len(pending))
    return mine


def run_shard(
    indices: Sequence[int],
    predict: Callable[[int], None],
    info: DistInfo,
    *,
    progress: bool = True,
    desc: str = "evaluating",
) -> None:
    """Call ``predict(index)`` (which stores the sample's prediction) for this rank's ``indices``, then wait for
    every rank to finish its own (rank 0 shows the progress bar of its shard)."""
    bar = tqdm(
        indices,
        desc=f"{desc} (rank {info.rank} of {info.world_size})",
        disable=not (progress and info.is_main),
        unit="sample",
    )
    start = time.perf_counter()
    for index in bar:
        predict(index)
    done = time.perf_counter()
    barrier()
    logger.info(
        "rank %d: %d sample(s) in %.1f s, then %.1f s waiting for the other ranks",
        info.rank,
        len(indices),
        done - start,
        time.perf_counter() - done,
    )


def share_result(result: dict[str, Any] | None, info: DistInfo) -> dict[str, Any]:
    """Rank 0's ``result`` on every rank (the others pass None)."""
    shared = broadcast_object(result if info.is_main else None)
    assert isinstance(shared, dict)
    return shared
