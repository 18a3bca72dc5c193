"""Tests for the on-disk checkpoint store (aggregator_service/checkpoints.py)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from aggregator_service.checkpoints import CheckpointStore, encode_checkpoint
from model.serialization import MalformedTensorsError, sha256_hex


def _arrays(value: float) -> dict[str, np.ndarray]:
    return {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3) * value,
        "b": np.array([value, -value, 0.25], np.float32),
    }


def _ckpt(version: int, value: float = 1.0):
    return encode_checkpoint(version, _arrays(value), {"architecture_id": "test", "labels": "a,b"})


def test_encode_checkpoint_adds_version_metadata():
    c = _ckpt(3)
    assert c.version == 3
    assert c.metadata == {"architecture_id": "test", "labels": "a,b", "model_version": "3"}
    assert c.sha256 == sha256_hex(c.payload)
    assert c.path is None


def test_save_then_load_is_identical(tmp_path):
    store = CheckpointStore(tmp_path / "ckpts")
    original = _ckpt(7, value=1.5)
    path = store.save(original).path
    assert path == tmp_path / "ckpts" / "global-v00000007.safetensors"
    assert path.read_bytes() == original.payload

    loaded = store.load(7)
    assert loaded.version == 7
    assert loaded.path == path
    assert loaded.payload == original.payload
    assert loaded.sha256 == original.sha256
    assert loaded.metadata == {"architecture_id": "test", "labels": "a,b", "model_version": "7"}
    assert set(loaded.arrays) == {"w", "b"}
    for name, a in original.arrays.items():
        assert loaded.arrays[name].dtype == a.dtype
        np.testing.assert_array_equal(loaded.arrays[name], a)
    assert loaded.arrays["b"].tolist() == [1.5, -1.5, 0.25]


def test_save_leaves_no_temp_files(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_ckpt(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global-v00000001.safetensors"]


def test_versions_lists_only_final_names(tmp_path):
    store = CheckpointStore(tmp_path, keep=10)
    for v in (2, 1, 10):
        store.save(_ckpt(v))
    (tmp_path / ".global-v00000003.safetensors.tmp-123").write_bytes(_ckpt(3).payload)
    (tmp_path / "global-v3.safetensors").write_bytes(b"x")
    (tmp_path / "global-v00000004.safetensors.bak").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    assert store.versions() == [1, 2, 10]
    assert store.latest().version == 10


def test_latest_skips_truncated_and_temp_files(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=10)
    store.save(_ckpt(1, value=1.0))
    store.save(_ckpt(2, value=2.0))
    good3 = _ckpt(3, value=3.0).payload
    # A crash mid-write leaves the temp file; an outside copy left a truncated final file.
    (tmp_path / ".global-v00000003.safetensors.tmp-123").write_bytes(good3)
    (tmp_path / "global-v00000003.safetensors").write_bytes(good3[: len(good3) // 2])
    assert store.versions() == [1, 2, 3]
    with pytest.raises(MalformedTensorsError):
        store.load(3)

    with caplog.at_level(logging.WARNING, logger="fedser.checkpoints"):
        latest = store.latest()
    assert latest is not None
    assert latest.version == 2
    assert latest.arrays["b"].tolist() == [2.0, -2.0, 0.25]
    skipped = [r for r in caplog.records if r.getMessage() == "checkpoint_skipped"]
    assert len(skipped) == 1
    assert skipped[0].fields["version"] == 3
    assert "not a valid safetensors payload" in skipped[0].fields["reason"]


def test_latest_skips_file_whose_metadata_names_another_version(tmp_path):
    store = CheckpointStore(tmp_path, keep=10)
    store.save(_ckpt(1))
    store.path_for(2).write_bytes(_ckpt(5).payload)  # renamed by hand
    with pytest.raises(MalformedTensorsError, match="global-v00000002.safetensors: metadata says version '5'"):
        store.load(2)
    assert store.latest().version == 1


def test_latest_none_when_all_damaged(tmp_path):
    store = CheckpointStore(tmp_path)
    store.path_for(1).write_bytes(b"")
    store.path_for(2).write_bytes(b"\x00" * 16)
    assert store.latest() is None


def test_latest_on_empty_folder_is_none(tmp_path):
    store = CheckpointStore(tmp_path / "new")
    assert (tmp_path / "new").is_dir()
    assert store.versions() == []
    assert store.latest() is None


def test_prune_keeps_newest(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for v in range(1, 7):
        store.save(_ckpt(v))
    assert store.versions() == [4, 5, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "global-v00000004.safetensors",
        "global-v00000005.safetensors",
        "global-v00000006.safetensors",
    ]
    assert store.latest().version == 6


@pytest.mark.parametrize("keep, expected_keep", [(0, 1), (-4, 1), (1, 1), (5, 5)])
def test_keep_is_at_least_one(tmp_path, keep, expected_keep):
    store = CheckpointStore(tmp_path, keep=keep)
    assert store.keep == expected_keep
    store.save(_ckpt(1))
    store.save(_ckpt(2))
    assert store.versions() == ([2] if expected_keep == 1 else [1, 2])


def test_save_overwrites_same_version(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_ckpt(4, value=1.0))
    store.save(_ckpt(4, value=9.0))
    assert store.versions() == [4]
    assert store.load(4).arrays["b"].tolist() == [9.0, -9.0, 0.25]


def test_streamed_checkpoint_equals_the_in_memory_one_and_outlives_pruning(tmp_path):
    from aggregator_service.checkpoints import write_in_memory
    from model.encodings import TensorSpec
    from model.serialization import bytes_to_arrays, xxh3_hex

    store = CheckpointStore(tmp_path, keep=1)
    arrays = {"w": np.arange(200_000, dtype=np.float32).reshape(400, 500) / 7, "b": np.ones(3, np.float32)}
    specs = {k: TensorSpec(v.dtype, v.shape) for k, v in arrays.items()}

    def blocks(name):  # uneven blocks, as FedAvg yields them
        flat = arrays[name].reshape(-1)
        for start in range(0, flat.size, 65_536):
            yield flat[start : start + 65_536]

    streamed = store.write_stream(1, {"architecture_id": "test"}, specs, blocks)
    in_memory = write_in_memory(1, {"architecture_id": "test"}, specs, blocks)
    assert streamed.data is None and streamed.path == store.path_for(1)
    assert streamed.payload == in_memory.payload == streamed.path.read_bytes()
    assert (streamed.sha256, streamed.xxh3_128) == (sha256_hex(in_memory.payload), xxh3_hex(in_memory.payload))
    for name, a in arrays.items():
        np.testing.assert_array_equal(bytes_to_arrays(bytes(streamed.payload))[name], a)
        np.testing.assert_array_equal(streamed.arrays[name], a)
    assert store.load(1).payload == streamed.payload
    # Version 2 prunes version 1's file; a pull still streaming version 1 reads on from its descriptor.
    store.write_stream(2, {"architecture_id": "test"}, specs, blocks)
    assert not store.path_for(1).exists()
    assert streamed.read(8, 1 << 20) == in_memory.payload[8 : 8 + (1 << 20)]


def test_a_failed_stream_leaves_no_file_and_the_previous_version(tmp_path):
    from model.encodings import TensorSpec

    store = CheckpointStore(tmp_path)
    store.save(_ckpt(1))
    specs = {"w": TensorSpec(np.dtype(np.float32), (2, 3)), "b": TensorSpec(np.dtype(np.float32), (3,))}

    def short(name):
        yield np.zeros(1, np.float32)

    with pytest.raises(ValueError, match="layout has"):
        store.write_stream(2, {"architecture_id": "test"}, specs, short)
    assert store.versions() == [1] and list(tmp_path.glob(".*tmp*")) == []
    assert store.latest().version == 1


def test_every_way_of_making_a_checkpoint_gives_the_same_data_digest(tmp_path):
    """data_xxh3_128 covers the tensor bytes only: what a client rebuilding the model from a delta can check."""
    from aggregator_service.checkpoints import write_in_memory
    from model.encodings import TensorSpec
    from model.serialization import data_xxh3

    original = _ckpt(3, value=0.75)
    arrays = {k: np.array(v) for k, v in original.arrays.items()}
    specs = {k: TensorSpec(v.dtype, v.shape) for k, v in arrays.items()}
    store = CheckpointStore(tmp_path)
    meta = {"architecture_id": "test"}
    streamed = store.write_stream(4, meta, specs, lambda name: iter([arrays[name]]))
    in_memory = write_in_memory(4, meta, specs, lambda name: iter([arrays[name]]))
    digests = {original.data_xxh3_128, store.save(original).data_xxh3_128, store.load(3).data_xxh3_128,
               streamed.data_xxh3_128, in_memory.data_xxh3_128, data_xxh3(arrays)}
    assert len(digests) == 1 and len(next(iter(digests))) == 32
    assert original.xxh3_128 != original.data_xxh3_128  # the whole payload's checksum covers the header too
