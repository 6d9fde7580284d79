"""The shard index (shards/index.py): written by the build, equal to what the tar's own headers
say, and used or rebuilt so that a reader never reads a wrong span."""

import json
import tarfile

import pytest

from shards import index
from shards.manifest import read_manifest


def test_the_build_writes_an_index_that_matches_the_tar(synth_shards):
    for s in read_manifest(synth_shards)["splits"]["train2017"]["shards"]:
        shard = synth_shards / s["file"]
        data = json.loads(index.index_path(shard).read_text())
        assert data["tar_bytes"] == shard.stat().st_size == s["bytes"]
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert len(data["samples"]) == s["num_samples"]
        for key, start, end, where in data["samples"]:
            assert set(where) == {"png", "json"}
            for ext, (offset, size) in where.items():
                m = members[f"{key}.{ext}"]
                assert (offset, size) == (m.offset_data, m.size)
            assert start == min(members[f"{key}.{e}"].offset for e in where)
        raw = next(index.read_positions(shard, [len(data["samples"]) - 1]))
        with tarfile.open(shard) as tar:
            last = data["samples"][-1][0]
            assert raw["png"] == tar.extractfile(f"{last}.png").read()
            assert raw["json"] == tar.extractfile(f"{last}.json").read()


def test_without_its_index_or_with_a_stale_one_a_shard_is_read_from_its_headers(
        synth_shards, tmp_path):
    import shutil

    from shards.reader import EvalStream

    work = tmp_path / "copy"
    shutil.copytree(synth_shards, work)
    before = [b["key"] for b in EvalStream(work, "val2017", 3, rank=0, world=1)]
    first = read_manifest(work)["splits"]["val2017"]["shards"][0]["file"]
    index.index_path(work / first).unlink()  # built before indexes existed
    assert [b["key"] for b in EvalStream(work, "val2017", 3, rank=0, world=1)] == before
    # an index that does not describe the tar (another build's) is not trusted
    other = read_manifest(work)["splits"]["train2017"]["shards"][0]["file"]
    shutil.copy(index.index_path(work / other), index.index_path(work / first))
    assert [b["key"] for b in EvalStream(work, "val2017", 3, rank=0, world=1)] == before


def test_a_tar_cut_inside_a_member_keeps_its_whole_samples(synth_shards, tmp_path):
    shard = synth_shards / read_manifest(synth_shards)["splits"]["val2017"]["shards"][0]["file"]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    scanned = index.scan(cut)
    with tarfile.open(shard) as tar:
        whole = [m for m in tar.getmembers() if m.offset_data + m.size <= cut.stat().st_size]
    keys = [m.name.split(".")[0] for m in whole]
    complete = [k for k in dict.fromkeys(keys) if keys.count(k) == 2]
    assert not scanned.complete and scanned.keys() == complete
    with pytest.raises(Exception, match="cut.tar"):
        list(index.read_positions(cut, [len(complete)]))
