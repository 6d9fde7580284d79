"""Where each sample lies inside its tar shard, so a reader fetches exactly the bytes it needs.

A shard is a plain tar (WebDataset layout: `KEY.png`, `KEY.json`, ...). Its index lists, per
sample in file order, the key, the byte span [start, end) from the first member's header to
the end of the last member's padded data, and each member's data offset and size:

    DIR/{split}-{i:06d}.tar.idx.json   {"format": 1, "tar_bytes": N,
                                        "samples": [[key, start, end, {ext: [offset, size]}]]}

`shg shards build` writes it beside every shard (before the shard is renamed into place, so a
shard that exists has its index). Shards built before indexes existed, or replaced since (the
tar's size differs from `tar_bytes`), are indexed on the fly from their tar headers alone
(512 bytes a member, no image bytes).

With the index, slot q of G loader slots reads only its own samples' spans (whatever the ratio
of slots to shards); the spans of all samples tile the archive, so one pass over a split reads
the shards' bytes once (bar the end-of-archive blocks). Every read adds to a per-process
counter (`bytes_read()`), which tests and bench/scale.py use to prove it.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .manifest import DataError

log = logging.getLogger(__name__)

SUFFIX = ".idx.json"
FORMAT = 1
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's key/extension split
_BYTES_READ = [0]


def bytes_read() -> int:
    """Shard bytes this process has read through indexes so far."""
    return _BYTES_READ[0]


def index_path(shard: str | Path) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name + SUFFIX)


@dataclass
class ShardIndex:
    path: Path
    tar_bytes: int
    samples: list
    """[key, start, end, {ext: (offset, size)}] per sample, in file order."""
    complete: bool = True
    """False when the tar ended inside a member (cut short): `samples` holds the whole ones."""

    def __len__(self) -> int:
        return len(self.samples)

    def keys(self) -> list[str]:
        return [s[0] for s in self.samples]

    def to_json(self) -> dict:
        return {"format": FORMAT, "tar_bytes": self.tar_bytes,
                "samples": [[k, a, b, {e: list(m) for e, m in members.items()}]
                            for k, a, b, members in self.samples]}


def scan(path: str | Path) -> ShardIndex:
    """Index a tar from its headers (data is seeked over, not read). A tar cut short keeps the
    samples whose members are whole and is marked incomplete; an unreadable one is a
    DataError naming it."""
    path = Path(path)
    size = path.stat().st_size
    samples: list = []
    complete = True
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                end = member.offset_data + member.size
                if end > size:
                    complete = False
                    break
                match = _KEY.match(member.name)
                if match is None:
                    continue
                key, ext = match.groups()
                padded = min(size, member.offset_data + -(-member.size // 512) * 512)
                if samples and samples[-1][0] == key:
                    samples[-1][2] = padded
                    samples[-1][3][ext] = (member.offset_data, member.size)
                else:
                    samples.append([key, member.offset, padded,
                                    {ext: (member.offset_data, member.size)}])
    except (tarfile.TarError, EOFError, OSError) as exc:
        if not samples:
            raise DataError(f"shard {path}: damaged ({exc})") from None
        complete = False
    # A sample whose last member was lost to the cut is not whole either.
    if not complete and samples and not {"png", "json"} <= set(samples[-1][3]):
        samples.pop()
    return ShardIndex(path, size, samples, complete)


def write(path: str | Path, index: ShardIndex) -> Path:
    """The index file of shard `path` (atomically)."""
    from . import atomic

    target = index_path(path)
    atomic.write_text(target, json.dumps(index.to_json(), separators=(",", ":")))
    return target


_CACHE: dict = {}


def load(path: str | Path) -> ShardIndex:
    """The shard's index: its index file when it matches the tar's size, else scanned from the
    tar (a shard from before indexes, or replaced since). Cached per process."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"shard {path}: missing") from None
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == (stat.st_size, stat.st_mtime_ns):
        return cached[1]
    index = None
    sidecar = index_path(path)
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text())
            if data.get("format") == FORMAT and data.get("tar_bytes") == stat.st_size:
                index = ShardIndex(path, stat.st_size,
                                   [[k, a, b, {e: tuple(m) for e, m in members.items()}]
                                    for k, a, b, members in data["samples"]])
            else:
                log.info("%s: index does not match the shard (replaced?); reading its headers",
                         sidecar)
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable index; reading the shard's headers instead", sidecar)
    if index is None:
        index = scan(path)
    _CACHE[path] = ((stat.st_size, stat.st_mtime_ns), index)
    return index


class ShortSample(Exception):
    """A sample the index lists whose bytes the file no longer holds (cut short)."""


class SpanReader:
    """Reads samples of shards by index position, one open file per shard at a time."""

    def __init__(self):
        self._path: Path | None = None
        self._file = None

    def _open(self, path: Path):
        if self._path != path:
            self.close()
            self._file, self._path = open(path, "rb"), path
        return self._file

    def read(self, path: Path, index: ShardIndex, position: int,
             members: Iterable[str] | None = None) -> dict:
        """Raw sample {"__key__", "__url__", ext: bytes} at `position` of the shard; only the
        named `members` (e.g. ("json",)) when given, else the whole span in one read."""
        if position >= len(index):
            raise ShortSample(f"sample {position} is missing (the shard holds {len(index)})")
        key, start, end, where = index.samples[position]
        f = self._open(Path(path))
        raw = {"__key__": key, "__url__": str(path)}
        if members is not None:
            for ext in members:
                if ext not in where:
                    raise ShortSample(f"sample {key} has no {ext}")
                offset, size = where[ext]
                f.seek(offset)
                data = f.read(size)
                _BYTES_READ[0] += len(data)
                if len(data) != size:
                    raise ShortSample(f"sample {key}: cut short")
                raw[ext] = data
            return raw
        f.seek(start)
        span = f.read(end - start)
        _BYTES_READ[0] += len(span)
        for ext, (offset, size) in where.items():
            data = span[offset - start:offset - start + size]
            if len(data) != size:
                raise ShortSample(f"sample {key}: cut short")
            raw[ext] = data
        return raw

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._path = None

    def __del__(self):
        self.close()


def read_positions(path: str | Path, positions: Iterable[int],
                   members: Iterable[str] | None = None) -> Iterator[dict]:
    """Raw samples at the given index positions of one shard (a damaged one: DataError)."""
    path = Path(path)
    index = load(path)
    reader = SpanReader()
    try:
        for position in positions:
            try:
                yield reader.read(path, index, position, members)
            except ShortSample as exc:
                raise DataError(f"shard {path}: {exc}") from None
    finally:
        reader.close()
