"""Shared pieces of the analyses: the model on its device, streaming inference over this rank's
share of a split, nearest samples (montages and plots: shg/visualize.py)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..evaluation.core import ModelOnSplit, Placement, placement, progress_bar, split_batches

log = logging.getLogger(__name__)

MAX_AUTO_WORKERS = 8


@dataclass
class ModelAnalysis(ModelOnSplit):
    """What the analyses that run a model over a split share (besides ModelOnSplit's model,
    device and precision)."""
    batch_size: int = 32
    limit: int = 0
    """Only the first `limit` samples of the split (0: all)."""
    num_workers: int | None = None
    """Loader processes per rank (0: read in the rank's own process); None: `auto_workers`."""

    def workers(self) -> int:
        return auto_workers() if self.num_workers is None else self.num_workers

    def model_on_device(self):
        """(model on its device, metadata, weights file, Placement)."""
        place = placement(self.device, self.precision)  # a wrong --device fails before loading
        model, meta, source = self.load_model()
        return model.to(place.device), meta, source, place


def auto_workers() -> int:
    """Loader processes per rank when not given: the CPUs this process may use (its affinity,
    Slurm's --cpus-per-task), shared by the node's ranks, less one for the rank; 1 to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        os.cpu_count() or 1
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        cpus = min(cpus, int(os.environ["SLURM_CPUS_PER_TASK"]))
    per_rank = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, per_rank - 1))


def describe(place: Placement, world: int, workers: int) -> str:
    return (f"{place.describe()}, {world} rank{'s' if world > 1 else ''} x {workers} loader "
            f"worker{'s' if workers != 1 else ''}")


def batches(shards: str, split: str, batch_size: int, meta: dict | None,
            limit: int | None = None, desc: str = "samples", *, rank: int = 0, world: int = 1,
            num_workers: int = 1) -> Iterator[dict]:
    """Un-augmented batches of this rank's share of a split (every sample of the split once
    over all ranks; each batch carries its samples' manifest `index`), with a progress bar on
    rank 0. Closing the generator early (`close()`) stops the loader's workers."""
    with progress_bar(shards, split, limit, world, rank == 0, desc) as bar:
        for batch in split_batches(shards, split, batch_size, rank=rank, world=world,
                                   mean=(meta or {}).get("mean_rgb"), limit=limit,
                                   num_workers=num_workers):
            if not batch["key"]:
                continue
            yield batch
            bar.update(len(batch["key"]))


def barrier() -> None:
    """Wait for every rank (nothing in a lone process)."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def nearest(points: np.ndarray, data: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the row of `data` (N, D; may be a memmap) nearest to each of `points` (M, D),
    scanning `data` in chunks so memory stays bounded."""
    points = np.asarray(points, dtype=np.float64)
    best = np.full(len(points), np.inf)
    index = np.zeros(len(points), dtype=np.int64)
    pp = (points ** 2).sum(1)
    for start in range(0, len(data), chunk):
        block = np.asarray(data[start:start + chunk], dtype=np.float64)
        d = pp[:, None] - 2 * points @ block.T + (block ** 2).sum(1)[None]
        j = d.argmin(1)
        better = d[np.arange(len(points)), j] < best
        best[better] = d[np.arange(len(points)), j][better]
        index[better] = start + j[better]
    return index
