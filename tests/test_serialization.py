"""Tests for tensor serialization, checksums and chunking (model/serialization.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from model.network import SeedCNN
from model.serialization import (
    DEFAULT_CHUNK_BYTES,
    MalformedTensorsError,
    arrays_to_bytes,
    bytes_to_arrays,
    iter_chunks,
    load_arrays_into,
    module_to_arrays,
    sha256_hex,
)


def _sample_arrays() -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7.0,
        "conv.bias": np.array([-1.5, 0.0, 3.25], dtype=np.float32),
        "f64": np.array([[1e-300, -2.5e200]], dtype=np.float64),
        "f16": np.array([0.5, -65504.0], dtype=np.float16),
        "i64": np.array([-(2**62), 2**62 + 1], dtype=np.int64),
        "i8": np.array([-128, 127], dtype=np.int8),
        "u8": np.array([0, 255, 7], dtype=np.uint8),
        "flag": np.array([True, False, True]),
        "empty": np.zeros((0, 3), dtype=np.int16),
    }


def test_round_trip_keeps_names_dtypes_shapes_and_values():
    arrays = _sample_arrays()
    back = bytes_to_arrays(arrays_to_bytes(arrays))
    assert set(back) == set(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype, name
        assert back[name].shape == a.shape, name
        np.testing.assert_array_equal(back[name], a)
    assert back["conv.bias"].tolist() == [-1.5, 0.0, 3.25]
    assert back["i64"].tolist() == [-(2**62), 2**62 + 1]


def test_non_contiguous_input_is_serialized_by_value():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = bytes_to_arrays(arrays_to_bytes({"t": base.T, "s": base[:, ::2]}))
    assert back["t"].shape == (4, 3)
    assert back["t"].tolist() == base.T.tolist()
    assert back["s"].tolist() == [[0.0, 2.0], [4.0, 6.0], [8.0, 10.0]]


def test_round_trip_keeps_zero_dim_shape():
    back = bytes_to_arrays(arrays_to_bytes({"count": np.array(3.5, dtype=np.float32)}))
    assert back["count"].shape == ()


def test_serialization_is_deterministic():
    arrays = _sample_arrays()
    assert arrays_to_bytes(arrays) == arrays_to_bytes(dict(reversed(list(arrays.items()))))


def test_metadata_is_preserved(tmp_path):
    meta = {"architecture_id": "seed-cnn-v1", "model_version": "7"}
    data = arrays_to_bytes({"w": np.ones(2, np.float32)}, meta)
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="numpy") as fh:
        assert fh.metadata() == meta
    np.testing.assert_array_equal(bytes_to_arrays(data)["w"], [1.0, 1.0])


def test_no_metadata_gives_none(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(arrays_to_bytes({"w": np.ones(2, np.float32)}))
    with safe_open(str(path), framework="numpy") as fh:
        assert fh.metadata() is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"garbage!!",
        b"\x02\x00\x00\x00\x00\x00\x00\x00{",  # header claims 2 bytes, only 1 present
        b"\xff" * 8 + b"{}",  # absurd header length
        b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
    ],
    ids=["empty", "one-byte", "garbage", "tiny", "huge-header", "bad-json"],
)
def test_malformed_bytes_raise(data):
    with pytest.raises(MalformedTensorsError, match="not a valid safetensors payload"):
        bytes_to_arrays(data)


@pytest.mark.parametrize("cut", [1, 8, 20, -1, -4])
def test_truncated_payload_raises(cut):
    payload = arrays_to_bytes({"w": np.arange(16, dtype=np.float32)}, {"k": "v"})
    with pytest.raises(MalformedTensorsError):
        bytes_to_arrays(payload[:cut])


def test_malformed_error_is_a_value_error():
    assert issubclass(MalformedTensorsError, ValueError)
    with pytest.raises(ValueError):
        bytes_to_arrays(b"nope")


def test_bytes_to_arrays_accepts_memoryview_and_bytearray():
    payload = arrays_to_bytes({"w": np.array([2.0, 4.0], np.float32)})
    assert bytes_to_arrays(bytearray(payload))["w"].tolist() == [2.0, 4.0]
    assert bytes_to_arrays(memoryview(payload))["w"].tolist() == [2.0, 4.0]


@pytest.mark.parametrize(
    "size, chunk, expected_lengths",
    [
        (0, 4, []),
        (1, 4, [1]),
        (4, 4, [4]),
        (8, 4, [4, 4]),
        (10, 4, [4, 4, 2]),
        (10, 1, [1] * 10),
        (10, 100, [10]),
    ],
)
def test_iter_chunks_sizes_and_join(size, chunk, expected_lengths):
    data = bytes(range(256))[:size] if size <= 256 else bytes(size)
    chunks = list(iter_chunks(data, chunk))
    assert [len(c) for c in chunks] == expected_lengths
    assert all(isinstance(c, bytes) for c in chunks)
    assert b"".join(chunks) == data


def test_iter_chunks_default_size_is_one_mebibyte():
    assert DEFAULT_CHUNK_BYTES == 1_048_576
    data = bytes(DEFAULT_CHUNK_BYTES * 2 + 3)
    chunks = list(iter_chunks(data))
    assert [len(c) for c in chunks] == [1_048_576, 1_048_576, 3]
    assert b"".join(chunks) == data


def test_sha256_known_values():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(memoryview(b"abc")) == sha256_hex(b"abc")


def test_module_round_trip_on_seed_cnn():
    torch.manual_seed(1)
    src = SeedCNN()
    torch.manual_seed(2)
    dst = SeedCNN()
    arrays = module_to_arrays(src)
    assert list(arrays) == list(src.state_dict())
    assert arrays["classifier.weight"].shape == (4, 1024)
    assert arrays["features.0.weight"].shape == (256, 1, 5)
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert not np.array_equal(module_to_arrays(dst)["classifier.weight"], arrays["classifier.weight"])

    load_arrays_into(dst, bytes_to_arrays(arrays_to_bytes(arrays)))
    for name, tensor in dst.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), arrays[name])
    x = torch.randn(2, 1, 97)
    src.eval()
    dst.eval()
    assert torch.equal(src(x), dst(x))


def test_module_to_arrays_returns_copies():
    model = SeedCNN()
    arrays = module_to_arrays(model)
    arrays["classifier.bias"][:] = 123.0
    assert not torch.any(model.classifier.bias == 123.0)


def test_load_arrays_into_missing_key_raises():
    model = SeedCNN()
    arrays = module_to_arrays(model)
    del arrays["classifier.bias"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"classifier.bias\""):
        load_arrays_into(model, arrays)


def test_load_arrays_into_unexpected_key_raises():
    model = SeedCNN()
    arrays = module_to_arrays(model)
    arrays["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"extra.weight\""):
        load_arrays_into(model, arrays)
