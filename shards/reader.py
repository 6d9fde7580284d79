"""Streaming shard readers: an endless, exactly resumable training stream and an evaluation
reader that visits every sample once. Both read through the shards' indexes (shards/index.py):
a slot reads only its own samples' bytes, each once.

Training stream layout. Each rank r runs W loader workers; worker slot s of rank r is global
slot q = r*W + s of G = world*W. For pass p over the data, the shard list is permuted with a seed
of (seed, p), the same on every slot, and the shards in that order are one sequence of N
samples; slot q takes its contiguous part of it (`slot_range`: N/G samples, +-1, for any ratio
of slots to shards). The part's sample references pass a shuffle buffer seeded by
(seed, q, p), emptied at the end of the pass, and are cut into batches; only then are their
bytes read. Batch g of the rank comes from slot g % W as its batch g // W, which is the order
torch's DataLoader returns workers' batches in. Augmentation draws come from a generator
seeded by (seed, r, s, g // W, position). A resume at batch g0 therefore skips whole passes by
arithmetic and replays at most one pass of the buffer on references: it reads no byte it
throws away, takes the same time at any step, and the resumed stream is bit-identical.
Ranks never wait for each other: every stream is endless, so each rank gets exactly the number
of batches it asks for (the job of webdataset's resampled/with_epoch).
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


def read_shard(path: Path, expected: int | None, on_error: str = "raise") -> Iterator[dict]:
    """Raw samples of one whole tar, in order, read sequentially (tools and tests; the streams
    read through the index). A damaged or short shard raises a DataError naming it, or with
    on_error="skip" is cut short with a warning (the samples read so far are kept)."""
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
            return
        raise DataError(message) from None


def count_samples(path: Path) -> int:
    """Samples in a shard from its tar headers alone (no image is read)."""
    from . import index

    return len(index.scan(path))


def check_split(root: str | Path, split: str) -> None:
    """Every shard the manifest lists for `split` is there and holds the samples it says
    (a clear error at start instead of a failure hours into training). One stat per shard
    when the manifest records the shard's size; the tar's headers are read only for a shard
    whose size differs (or an old manifest without sizes)."""
    for shard in split_entry(root, split)["shards"]:
        path = Path(root) / shard["file"]
        if not path.is_file():
            raise DataError(f"shard {path}: listed in {Path(root) / 'manifest.json'} but missing")
        if shard.get("bytes") == path.stat().st_size:
            continue
        found = count_samples(path)
        if found != shard["num_samples"]:
            raise DataError(f"shard {path}: holds {found} samples, the manifest says "
                            f"{shard['num_samples']} (replaced or cut short?)")
        if "bytes" in shard:
            raise DataError(f"shard {path}: {path.stat().st_size} bytes, the manifest says "
                            f"{shard['bytes']} (replaced since the build? rebuild the shards)")


def decode_or_skip(raw: dict, cfg: SampleConfig, rng, on_error: str,
                   schema: KeypointSchema, targets: bool = True) -> dict | None:
    """decode(), with a failure named by shard and sample: raised, or (on_error="skip")
    warned about and returned as None."""
    try:
        return decode(raw, cfg, rng, schema, targets)
    except Exception as exc:  # a corrupt PNG or json raises many kinds
        where = f"shard {raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}"
        if on_error == "skip":
            warnings.warn(f"{where}: skipped ({type(exc).__name__}: {exc})", stacklevel=2)
            return None
        raise DataError(f"{where}: cannot decode it ({type(exc).__name__}: {exc})") from None


class _ShuffleBuffer:
    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.items = size, rng, []

    def __call__(self, source: Iterator) -> Iterator:
        for item in source:
            if len(self.items) < self.size:
                self.items.append(item)
                continue
            k = int(self.rng.integers(len(self.items)))
            self.items[k], item = item, self.items[k]
            yield item
        while self.items:
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


def slot_range(num_samples: int, slots: int, slot: int) -> tuple[int, int]:
    """The contiguous part [lo, hi) of `num_samples` that slot `slot` of `slots` reads: sizes
    differ by at most one, whatever the ratio of slots to shards."""
    return slot * num_samples // slots, (slot + 1) * num_samples // slots


class _Shards:
    """A split's shards as one sequence of samples (in a given shard order), read through the
    shards' indexes: only the samples asked for, each in one read."""

    def __init__(self, root: Path, entry: dict, on_error: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.paths = [root / s["file"] for s in entry["shards"]]
        self.counts = np.asarray([s["num_samples"] for s in entry["shards"]], dtype=np.int64)
        self.on_error = on_error
        self._reader = None
        self._warned: set = set()

    def refs(self, order, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """(shard, position in it) of the samples [lo, hi) of the shards concatenated in
        `order` (counts only: nothing is read)."""
        counts = self.counts[order]
        ends = np.cumsum(counts)
        first = int(np.searchsorted(ends, lo, side="right"))
        for k, end, count in zip(order[first:], ends[first:], counts[first:]):
            start = int(end - count)
            if start >= hi:
                return
            for v in range(max(lo, start), min(hi, int(end))):
                yield int(k), v - start

    def fetch(self, k: int, position: int) -> dict | None:
        """The raw sample; a damaged or short shard raises a DataError naming it, or with
        on_error="skip" warns once per shard and returns None."""
        from . import index

        path = self.paths[k]
        try:
            if self._reader is None:
                self._reader = index.SpanReader()
            return self._reader.read(path, index.load(path), position)
        except (index.ShortSample, DataError, OSError) as exc:
            message = str(exc) if isinstance(exc, DataError) else f"shard {path}: {exc}"
            if self.on_error == "skip":
                if path not in self._warned:
                    self._warned.add(path)
                    warnings.warn(message + " - skipping the samples it lacks", stacklevel=2)
                return None
            raise DataError(message) from None


class TrainStream(IterableDataset):
    """Endless augmented batches for one rank (see the module docstring for the order)."""

    def __init__(self, root: str | Path, split: str, batch_size: int, *, seed: int = 0,
                 cfg: SampleConfig | None = None, rank: int | None = None,
                 world: int | None = None, num_workers: int = 0, start_batch: int = 0,
                 num_batches: int | None = None, shuffle_buffer: int = 256,
                 mean_from: str | None = None, on_error: str = "raise"):
        self.root, self.split = Path(root), split
        entry = split_entry(root, split)
        self.data = _Shards(self.root, entry, on_error)
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
        slots = self.world * self.num_workers
        if self.num_samples < slots:
            raise DataError(f"{self.root}: split '{split}' has {self.num_samples} samples, fewer "
                            f"than the {slots} reader slots (ranks x data.num_workers): use "
                            "fewer loader workers")
        self.start_batch, self.num_batches = start_batch, num_batches
        self.shuffle_buffer, self.on_error = shuffle_buffer, on_error

    @property
    def batches_per_epoch(self) -> int:
        """Batches per rank that make one pass over the split (at least 1)."""
        return max(1, self.num_samples // (self.world * self.batch_size))

    def _refs(self, slot: int, slots: int, skip: int) -> Iterator[tuple[int, int]]:
        """The slot's endless stream of sample references, pass after pass, its first `skip`
        left out. Each pass is independent (shard order from (seed, pass), a shuffle buffer
        from (seed, slot, pass)) and as long as the slot's range, so whole passes are skipped
        by arithmetic and at most one pass is replayed, on references only: a resume reads no
        byte it throws away, and its cost does not grow with the step."""
        lo, hi = slot_range(self.num_samples, slots, slot)
        p, offset = divmod(skip, hi - lo)
        while True:
            order = np.random.default_rng([self.seed, p]).permutation(len(self.data.counts))
            shuffle = _ShuffleBuffer(self.shuffle_buffer,
                                     np.random.default_rng([self.seed, slot, p, 7]))
            refs = shuffle(self.data.refs(order, lo, hi))
            for _ in range(offset):
                next(refs)
            offset = 0
            yield from refs
            p += 1

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
        # First batch index g >= start_batch with g % workers == s, then every workers-th;
        # it is this slot's batch j = g // workers.
        g = self.start_batch + ((s - self.start_batch) % workers)
        j = g // workers
        refs = self._refs(self.rank * workers + s, self.world * workers, j * self.batch_size)
        end = None if self.num_batches is None else self.start_batch + self.num_batches
        while end is None or g < end:
            chunk = [next(refs) for _ in range(self.batch_size)]
            # A sample that cannot be read or decoded (on_error="skip") leaves its batch one
            # smaller: the batches keep their references, so a resumed stream stays
            # bit-identical.
            samples = []
            for pos, (k, position) in enumerate(chunk):
                raw = self.data.fetch(k, position)
                if raw is None:
                    continue
                rng = np.random.default_rng([self.seed, self.rank, s, j, pos])
                sample = decode_or_skip(raw, self.cfg, rng, self.on_error, self.schema)
                if sample is not None:
                    samples.append(sample)
            if not samples:
                k, position = chunk[-1]
                raise DataError(f"every sample of a batch failed (the last: shard "
                                f"{self.data.paths[k]}: sample {position})")
            batch = collate(samples, self.mean)
            batch["skipped"] = len(chunk) - len(samples)
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

    Split over ranks x workers into contiguous parts of the manifest order (`slot_range`):
    each slot reads only its own samples' bytes, so evaluation gets faster with ranks.
    `targets`: also the training targets (heatmaps, weights), for a validation loss or the
    oracle; evaluation alone needs only crops and keypoints."""

    def __init__(self, root: str | Path, split: str, batch_size: int, *,
                 rank: int | None = None, world: int | None = None,
                 cfg: SampleConfig | None = None, mean_from: str | None = None,
                 on_error: str = "raise", limit: int | None = None, mean=None,
                 targets: bool = False):
        self.root, self.split = Path(root), split
        entry = split_entry(root, split)
        self.data = _Shards(self.root, entry, on_error)
        self.schema = stored(entry)
        self.offsets = np.concatenate([[0], np.cumsum(self.data.counts)])
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
        self.targets = targets

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, w = (info.num_workers, info.id) if info else (1, 0)
        lo, hi = slot_range(self.num_samples, self.world * workers, self.rank * workers + w)
        order = np.arange(len(self.data.counts))
        batch: list[dict] = []
        for k, position in self.data.refs(order, lo, hi):
            raw = self.data.fetch(k, position)
            if raw is None:
                continue
            sample = decode_or_skip(raw, self.cfg, None, "raise", self.schema, self.targets)
            sample["index"] = int(self.offsets[k]) + position
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


def samples_by_key(root: str | Path, split: str, keys, members=("png", "json")) -> dict:
    """The raw samples (only `members`) of the given keys, found through the shards' indexes:
    the bytes of those samples are all that is read."""
    from . import index

    wanted, found = set(keys), {}
    for shard in split_entry(root, split)["shards"]:
        path = Path(root) / shard["file"]
        positions = [i for i, k in enumerate(index.load(path).keys()) if k in wanted]
        for raw in index.read_positions(path, positions, members):
            found[raw["__key__"]] = raw
        if len(found) == len(wanted):
            break
    return found


def crops_by_key(root: str | Path, split: str, keys) -> dict:
    """The stored crops (HxWx3 uint8) of the given sample keys (only their bytes are read)."""
    from .sample import decode_png

    return {key: decode_png(raw["png"])
            for key, raw in samples_by_key(root, split, keys, ("png",)).items()}


def split_members(root: str | Path, split: str, member: str = "json") -> Iterator[dict]:
    """Every sample of a split, in manifest order, with one member only (e.g. the JSON
    metadata without the image): {"__key__", "__url__", member: bytes}."""
    from . import index

    for shard in split_entry(root, split)["shards"]:
        path = Path(root) / shard["file"]
        yield from index.read_positions(path, range(len(index.load(path))), (member,))
