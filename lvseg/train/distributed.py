"""torch.distributed helpers: set-up from torchrun's environment, rank-aware reductions, a resumable sampler.

``torchrun --nproc_per_node=N -m lvseg train ...`` (or multi-node torchrun) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group
(NCCL on CUDA, gloo on CPU). Without them everything runs as a single process.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = [
    "DistInfo",
    "init_distributed",
    "all_reduce_mean",
    "all_gather_objects",
    "barrier",
    "broadcast_object",
    "EpochBatchSampler",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node) and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(
    device: str | torch.device | None = None, backend: str | None = None, timeout: timedelta | None = None
) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any) and pick the device.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). Under torchrun, CUDA means ``cuda:LOCAL_RANK``.
        backend: override the backend (default: ``"nccl"`` for CUDA, ``"gloo"`` for CPU).
        timeout: how long a collective (a barrier) may wait for the other ranks (default: torch's, 30 min for gloo);
            evaluation, whose ranks finish their shards at different times, waits longer.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from ..hub import resolve_device

    # the exact device asked for is checked (and named in the error): "cuda:3" on a 2-GPU machine, "gpu", ...
    want = resolve_device(device)
    if want.type == "cuda":
        if world > 1 or want.index is None:
            want = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(want)
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        chosen = backend or ("nccl" if want.type == "cuda" else "gloo")
        if timeout is not None:
            dist.init_process_group(backend=chosen, timeout=timeout)
        else:
            dist.init_process_group(backend=chosen)
        atexit.register(_leave_process_group)
        logger.info("joined process group: rank %d of %d (%s)", rank, world, chosen)
    if world > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local_rank, want)


def _leave_process_group() -> None:
    """Destroy the group :func:`init_distributed` created, at interpreter exit.

    A gloo group left to interpreter finalization can abort the process (``terminate called without an active
    exception``, exit code -6) after its work is done, which torchrun reports as a failed run (pytorch#190489);
    destroying it while the interpreter is still whole avoids that. A group the caller created is left alone.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # exiting anyway: report, never mask the exit status
            logger.warning("could not destroy the process group at exit: %s", exc)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over all ranks (identity in a single process)."""
    if not _active() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum a float over all ranks."""
    if not _active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class EpochBatchSampler:
    """Deterministic, resumable batches of ``(index, draw_seed)`` for one rank.

    Epoch ``e`` shuffles all indices with ``torch.Generator().manual_seed(seed + e)``, pads the order by wrapping
    around to a multiple of ``world_size * batch_size`` (every rank gets the same number of batches), and deals
    batch ``k`` of rank ``r`` from positions ``(k * world_size + r) * batch_size ...``. So the global batch ``k``
    is the same set of samples whatever the number of ranks, which makes a data-parallel run match a single
    process with the same global batch. ``draw_seed`` seeds the sample's own randomness (frame sampling,
    augmentation) so that it does not depend on workers or on where a run was resumed.
    """

    def __init__(
        self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
        if num_samples < 1:
            raise ConfigError("the training dataset is empty: check the data root and split")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        per_global = self.batch_size * self.world_size
        return -(-self.num_samples // per_global)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate epoch ``epoch`` from its batch ``start_batch`` (for resuming mid-epoch)."""
        self.epoch, self.start = epoch, start_batch

    def order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            idx = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            idx = list(range(self.num_samples))
        total = len(self) * self.batch_size * self.world_size
        return (idx * (-(-total // len(idx))))[:total]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order(self.epoch)
        bs, ws = self.batch_size, self.world_size
        for k in range(self.start, len(self)):
            base = (k * ws + self.rank) * bs
            positions = range(base, base + bs)
            yield [(order[p], (self.seed * 1_000_003 + self.epoch) * 10_000_019 + p) for p in positions]
