"""The one atomic-write helper of the project: a file (or directory) appears complete or not at
all (temp name beside the target, then `os.replace`, timm's habit). Every layer above uses it:
manifests, shard statistics, checkpoints, weights, best/, job records."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block succeeds it replaces `path`.

    On an error the temporary file or directory is removed and `path` is left untouched.
    `fsync=True` flushes a file's bytes to disk before the rename (checkpoints, manifests)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync and tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if path.is_dir() and tmp.is_dir():  # os.replace cannot replace a non-empty dir
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj, indent: int | None = None, fsync: bool = False) -> None:
    write_text(path, json.dumps(obj, indent=indent), fsync=fsync)
