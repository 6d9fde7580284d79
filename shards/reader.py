"""Streaming shard readers: an endless, exactly resumable training stream and an evaluation
reader that visits every sample once.

Training stream layout. Each rank r runs W loader workers; worker slot s of rank r is global
slot q = r*W + s of G = world*W. For pass p over the data, the shard list is permuted with a seed
of (seed, p), the same on every slot; slot q then reads shards[q::G] (or, with fewer shards than
slots, every shard keeping samples i with i % G == q). Its raw samples pass a seeded shuffle
buffer and are cut into batches; batch g of the rank comes from slot g % W as its batch g // W,
which is the order torch's DataLoader returns workers' batches in. Augmentation draws come from
a generator seeded by (seed, r, s, g // W, position), so skipping g0 batches on resume reads
the skipped raw bytes but decodes nothing, and the resumed stream is bit-identical.
Ranks never wait for each other: every stream is endless, so each rank gets exactly the number
of batches it asks for whatever the shard sizes (the job of webdataset's resampled/with_epoch).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .manifest import DataError, mean_rgb, split_entry
from .sample import SampleConfig, decode
from .schema import KeypointSchema, stored


def dist_rank_world() -> tuple[int, int]:
    """Rank and world size: torch.distributed when initialised, else RANK/WORLD_SIZE."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


ON_ERROR = ("raise", "skip")
"""What a reader does with a damaged shard or sample: stop with a DataError naming it, or skip
it with a warning and count it (`skipped` in every batch)."""


def read_shard(path: Path, expected: int | None, on_error: str = "raise",
               lost: list[int] | None = None) -> Iterator[dict]:
    """Raw samples of one tar. A damaged or short shard raises a DataError naming it, or with
    on_error="skip" is cut short with a warning (the samples read so far are kept, the
    missing ones added to lost[0])."""
    import webdataset as wds

    count = 0
    try:
        for sample in wds.tarfile_samples([{"url": str(path)}]):
            if "png" not in sample or "json" not in sample:
                raise ValueError(f"sample {sample.get('__key__')!r} lacks png/json")
            count += 1
            yield sample
        if expected is not None and count != expected:
            raise ValueError(f"read {count} samples, manifest says {expected} (truncated?)")
    except Exception as exc:  # tarfile/wds raise many kinds for damaged archives
        if isinstance(exc, DataError):
            raise
        message = f"shard {path}: {exc}"
        if on_error == "skip":
            warnings.warn(message + " - skipping the rest of this shard", stacklevel=2)
            if lost is not None:
                lost[0] += max(expected - count, 1) if expected is not None else 1
            return
        raise DataError(message) from None


def count_samples(path: Path) -> int:
    """Samples in a shard from its tar headers alone (no image is read)."""
    import tarfile

    try:
        with tarfile.open(path, "r:") as tar:
            return sum(1 for name in tar.getnames() if name.endswith(".png"))
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise DataError(f"shard {path}: damaged ({exc})") from None


def check_split(root: str | Path, split: str) -> None:
    """Every shard the manifest lists for `split` is there and holds the samples it says
    (a clear error at start instead of a failure hours into training)."""
    for shard in split_entry(root, split)["shards"]:
        path = Path(root) / shard["file"]
        if not path.is_file():
            raise DataError(f"shard {path}: listed in {Path(root) / 'manifest.json'} but missing")
        found = count_samples(path)
        if found != shard["num_samples"]:
            raise DataError(f"shard {path}: holds {found} samples, the manifest says "
                            f"{shard['num_samples']} (replaced or cut short?)")


def decode_or_skip(raw: dict, cfg: SampleConfig, rng, on_error: str,
                   schema: KeypointSchema) -> dict | None:
    """decode(), with a failure named by shard and sample: raised, or (on_error="skip")
    warned about and returned as None."""
    try:
        return decode(raw, cfg, rng, schema)
    except Exception as exc:  # a corrupt PNG or json raises many kinds
        where = f"shard {raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}"
        if on_error == "skip":
            warnings.warn(f"{where}: skipped ({type(exc).__name__}: {exc})", stacklevel=2)
            return None
        raise DataError(f"{where}: cannot decode it ({type(exc).__name__}: {exc})") from None


class _ShuffleBuffer:
    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.items = size, rng, []

    def __call__(self, source: Iterator[dict]) -> Iterator[dict]:
        for item in source:
            if len(self.items) < self.size:
                self.items.append(item)
                continue
            k = int(self.rng.integers(len(self.items)))
            self.items[k], item = item, self.items[k]
            yield item
        while self.items:  # only reached by finite sources
            yield self.items.pop(int(self.rng.integers(len(self.items))))


def collate(samples: list[dict], mean: np.ndarray) -> dict:
    """One batch: uint8 crops (the device subtracts `mean`, carried as batch["mean_rgb"]), the
    targets or the augmentation still to apply, keys, metadata."""
    batch = {k: torch.from_numpy(np.stack([s[k] for s in samples]))
             for k in ("image", "heatmaps", "weights", "keypoints", "augment") if k in samples[0]}
    batch["flip"] = torch.tensor([s["flip"] for s in samples])
    batch["mean_rgb"] = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    batch["key"] = [s["key"] for s in samples]
    batch["meta"] = [s["meta"] for s in samples]
    if "index" in samples[0]:
        batch["index"] = torch.tensor([s["index"] for s in samples])
    return batch


class TrainStream(IterableDataset):
    """Endless augmented batches for one rank (see the module docstring for the order)."""

    def __init__(self, root: str | Path, split: str, batch_size: int, *, seed: int = 0,
                 cfg: SampleConfig | None = None, rank: int | None = None,
                 world: int | None = None, num_workers: int = 0, start_batch: int = 0,
                 num_batches: int | None = None, shuffle_buffer: int = 256,
                 mean_from: str | None = None, on_error: str = "raise"):
        self.root, self.split = Path(root), split
        entry = split_entry(root, split)
        self.shards = [(self.root / s["file"], s["num_samples"]) for s in entry["shards"]]
        self.num_samples = entry["num_samples"]
        self.schema = stored(entry)
        self.mean = mean_rgb(root, split, mean_from)
        default_rank, default_world = dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world = default_world if world is None else world
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} outside world of {self.world}")
        self.batch_size, self.seed = batch_size, seed
        self.cfg = cfg or SampleConfig()
        self.num_workers = max(1, num_workers)
        self.start_batch, self.num_batches = start_batch, num_batches
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.shuffle_buffer, self.on_error = shuffle_buffer, on_error
        self._lost = [0]  # samples of damaged shards skipped (per loader worker)

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank that make one pass over the split (at least 1)."""
        return max(1, self.num_samples // (self.world * self.batch_size))

    def _raw(self, slot: int, slots: int) -> Iterator[dict]:
        """The slot's endless stream of raw samples, pass after pass."""
        n = len(self.shards)
        for p in range(1 << 62):
            order = np.random.default_rng([self.seed, p]).permutation(n)
            if n >= slots:
                for k in order[slot::slots]:
                    yield from read_shard(*self.shards[k], self.on_error, self._lost)
            else:
                i = 0
                for k in order:
                    for sample in read_shard(*self.shards[k], self.on_error, self._lost):
                        if i % slots == slot:
                            yield sample
                        i += 1

    def __iter__(self) -> Iterator[dict]:
        import cv2

        cv2.setNumThreads(1)  # one small warp per sample: threads only add overhead
        info = get_worker_info()
        workers = info.num_workers if info else 1
        if workers != self.num_workers:
            raise RuntimeError(f"TrainStream built for {self.num_workers} workers but the "
                               f"loader runs {workers}: pass num_workers to both")
        w = info.id if info else 0
        s = (w + self.start_batch) % workers  # the slot whose turn comes first on resume
        slot = self.rank * workers + s
        raw = _ShuffleBuffer(self.shuffle_buffer,
                             np.random.default_rng([self.seed, slot, 7]))(self._raw(
                                 slot, self.world * workers))
        # First batch index g >= start_batch with g % workers == s, then every workers-th.
        g = self.start_batch + ((s - self.start_batch) % workers)
        j_first = g // workers
        end = None if self.num_batches is None else self.start_batch + self.num_batches
        j = 0
        while end is None or g < end:
            chunk = [next(raw) for _ in range(self.batch_size)]
            if j < j_first:  # fast-forward after a resume: no decoding
                j += 1
                continue
            # A sample that fails to decode (on_error="skip") leaves its batch one smaller: the
            # batches keep their raw samples, so a resumed stream stays bit-identical.
            samples = []
            for pos, item in enumerate(chunk):
                rng = np.random.default_rng([self.seed, self.rank, s, j, pos])
                sample = decode_or_skip(item, self.cfg, rng, self.on_error, self.schema)
                if sample is not None:
                    samples.append(sample)
            skipped = len(chunk) - len(samples) + self._lost[0]
            self._lost[0] = 0
            if not samples:
                raise DataError(f"every sample of a batch failed to decode (the last: shard "
                                f"{chunk[-1].get('__url__')}: sample {chunk[-1].get('__key__')})")
            batch = collate(samples, self.mean)
            batch["skipped"] = skipped
            yield batch
            j += 1
            g += workers


def train_loader(stream: TrainStream) -> DataLoader:
    """DataLoader over a TrainStream (never pass it to accelerator.prepare: ranks split here)."""
    workers = stream.num_workers if stream.num_workers > 1 else 0
    if workers == 0 and stream.num_workers != 1:
        raise ValueError("num_workers must be >= 1 in TrainStream")
    # pinned host memory lets the copies to a GPU overlap compute (non_blocking in the trainer)
    return DataLoader(stream, batch_size=None, num_workers=workers,
                      persistent_workers=False, prefetch_factor=4 if workers else None,
                      multiprocessing_context="fork" if workers else None,
                      pin_memory=torch.cuda.is_available())


class EvalStream(IterableDataset):
    """Every sample of a split exactly once, un-augmented, each carrying its manifest index.

    Split over ranks x workers: by shard when there are enough shards, else by sample."""

    def __init__(self, root: str | Path, split: str, batch_size: int, *,
                 rank: int | None = None, world: int | None = None,
                 cfg: SampleConfig | None = None, mean_from: str | None = None,
                 on_error: str = "raise", limit: int | None = None, mean=None):
        self.root, self.split = Path(root), split
        entry = split_entry(root, split)
        self.shards = [(self.root / s["file"], s["num_samples"]) for s in entry["shards"]]
        self.schema = stored(entry)
        self.offsets = np.cumsum([0] + [n for _, n in self.shards])
        self.num_samples = entry["num_samples"] if limit is None else min(limit,
                                                                          entry["num_samples"])
        # `mean`: a model's own training mean (from its weights' metadata) wins.
        self.mean = (np.asarray(mean, dtype=np.float32) if mean is not None
                     else mean_rgb(root, split, mean_from))
        default_rank, default_world = dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world = default_world if world is None else world
        self.batch_size = batch_size
        base = cfg or SampleConfig()
        self.cfg = SampleConfig(**{**base.__dict__, "augment": False})
        self.on_error = on_error

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, w = (info.num_workers, info.id) if info else (1, 0)
        slots, slot = self.world * workers, self.rank * workers + w
        by_shard = len(self.shards) >= slots
        batch: list[dict] = []
        for k, (path, expected) in enumerate(self.shards):
            if by_shard and k % slots != slot:
                continue
            if self.offsets[k] >= self.num_samples:
                break
            for i, raw in enumerate(read_shard(path, expected, self.on_error)):
                index = int(self.offsets[k]) + i
                if index >= self.num_samples:
                    break
                if not by_shard and index % slots != slot:
                    continue
                sample = decode_or_skip(raw, self.cfg, None, "raise", self.schema)
                sample["index"] = index
                batch.append(sample)
                if len(batch) == self.batch_size:
                    yield collate(batch, self.mean)
                    batch = []
        if batch:
            yield collate(batch, self.mean)


def eval_loader(stream: IterableDataset, num_workers: int = 0) -> DataLoader:
    """A loader of an iterable dataset that batches itself (EvalStream, BoxCrops)."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers,
                      multiprocessing_context="fork" if num_workers else None,
                      pin_memory=torch.cuda.is_available())
