"""The shard directory's manifest and the data layer's error: what the writer (build.py)
records and every reader reads.

    DIR/manifest.json   {"format": 1, "splits": {split: {shards, num_samples, mean_rgb, ...}}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class DataError(Exception):
    """Bad input that stops the whole run (a file that cannot be used at all); its message is
    one line naming the file."""


def read_json_file(path: str | Path, what: str = "annotation file") -> tuple[object, bytes]:
    """(the parsed JSON, its bytes) of an input file; missing or invalid: a DataError naming
    it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    raw = path.read_bytes()
    try:
        return json.loads(raw), raw
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def read_manifest(out: str | Path, missing_ok: bool = False) -> dict:
    path = Path(out) / MANIFEST
    if not path.exists():
        if missing_ok:
            return {"format": FORMAT_VERSION, "splits": {}}
        raise DataError(f"{path}: no manifest (run `shg shards build`, or `shg shards finalize` "
                        "after a multi-task build)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT_VERSION or "splits" not in manifest:
        raise DataError(f"{path}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def split_entry(root: str | Path, split: str) -> dict:
    """One split's manifest entry; a clear error when it is missing or empty."""
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise DataError(f"{Path(root) / MANIFEST}: no split '{split}' "
                        f"(have: {', '.join(sorted(manifest['splits'])) or 'none'})")
    entry = manifest["splits"][split]
    if entry["num_samples"] == 0:
        raise DataError(f"{root}: split '{split}' has no samples")
    return entry


def mean_rgb(root: str | Path, split: str, mean_from: str | None = None) -> np.ndarray:
    """Mean RGB to subtract: `mean_from`'s (the training split, as the thesis) or the split's own."""
    manifest = read_manifest(root)
    source = mean_from if mean_from and mean_from in manifest["splits"] else split
    return np.asarray(split_entry(root, source)["mean_rgb"], dtype=np.float32)
