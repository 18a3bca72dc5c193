"""The zero-copy safetensors reader and payload writer, checked against the safetensors package."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.serialization import (
    MalformedTensorsError,
    allocate_payload,
    arrays_to_bytes,
    bytes_to_arrays,
    view_arrays,
)

ARRAYS = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "q": np.array([-127, 0, 5, 127], dtype=np.int8),
    "h": np.array([0.5, -2.0], dtype=np.float16),
    "s": np.array(3.25, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


def test_views_equal_the_package_and_share_the_buffer():
    payload = bytearray(arrays_to_bytes(ARRAYS, {"model_version": "7"}))
    views, metadata = view_arrays(payload)
    assert metadata == {"model_version": "7"}
    reference = bytes_to_arrays(bytes(payload))
    assert set(views) == set(reference) == set(ARRAYS)
    for name, ref in reference.items():
        assert views[name].dtype == ref.dtype and views[name].shape == ref.shape
        np.testing.assert_array_equal(views[name], ref)
        assert not views[name].flags.writeable
    # No copy: a change to the buffer shows in the view.
    _, start = struct.unpack_from("<Q", payload, 0)[0], 8 + struct.unpack_from("<Q", payload, 0)[0]
    header = json.loads(bytes(payload[8:start]))
    begin = header["w"]["data_offsets"][0]
    payload[start + begin : start + begin + 4] = np.float32(42.0).tobytes()
    assert views["w"].reshape(-1)[0] == 42.0


def test_allocated_payload_is_valid_safetensors_for_the_package():
    specs = {k: (v.dtype, v.shape) for k, v in ARRAYS.items()}
    payload, views = allocate_payload(specs, {"model_version": "3"})
    for name, a in ARRAYS.items():
        views[name][...] = a
    loaded = bytes_to_arrays(bytes(payload))
    for name, a in ARRAYS.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert loaded[name].dtype == a.dtype
    assert view_arrays(payload)[1] == {"model_version": "3"}
    assert (8 + struct.unpack_from("<Q", payload, 0)[0]) % 8 == 0  # data starts 8-aligned


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h: h["w"].update(data_offsets=[0, 40]), "do not fit"),
        (lambda h: h["w"].update(dtype="F99"), "bad header entry"),
        (lambda h: h["w"].update(shape=[3, -4]), "bad header entry"),
        (lambda h: h["w"].update(shape="34"), "bad header entry"),
        (lambda h: h.pop("q"), "hole|past the last tensor"),
        (lambda h: h.pop("w"), "hole|past the last tensor"),
        (lambda h: h.update(__metadata__={"a": 1}), "__metadata__"),
    ],
)
def test_malformed_headers_are_refused(mutate, message):
    payload = arrays_to_bytes({"w": ARRAYS["w"], "q": ARRAYS["q"]})
    n = struct.unpack_from("<Q", payload, 0)[0]
    header = json.loads(payload[8 : 8 + n])
    mutate(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with pytest.raises(MalformedTensorsError, match=message):
        view_arrays(struct.pack("<Q", len(raw)) + raw + payload[8 + n :])


def test_short_and_lying_lengths_are_refused():
    payload = arrays_to_bytes({"w": ARRAYS["w"]})
    for bad in (b"", payload[:7], struct.pack("<Q", 1 << 40) + payload[8:], payload + b"\0\0\0\0"):
        with pytest.raises(MalformedTensorsError):
            view_arrays(bad)


def _package_accepts(data: bytes) -> bool:
    try:
        bytes_to_arrays(data)
        return True
    except MalformedTensorsError:
        return False


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzzed_payloads_never_parse_into_something_the_package_rejects(data):
    base = bytearray(arrays_to_bytes({"w": ARRAYS["w"], "q": ARRAYS["q"], "h": ARRAYS["h"]}))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        base = base[: data.draw(st.integers(0, len(base)))]
    try:
        views, _ = view_arrays(base)
    except MalformedTensorsError:
        return
    # Whatever this reader accepts, the package accepts too, with the same tensors.
    assert _package_accepts(bytes(base))
    reference = bytes_to_arrays(bytes(base))
    assert set(views) == set(reference)
    for name, ref in reference.items():
        np.testing.assert_array_equal(views[name].view(np.uint8), ref.view(np.uint8))
