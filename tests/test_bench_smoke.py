"""Smoke test of the benchmark harness (`make bench`, benchmarks/): the smallest settings, every section.

It checks that the harness runs end to end against a real aggregator process
and writes results with the expected keys and positive numbers. It never
asserts on speed: timings belong in benchmarks/results/, not in tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


def test_quick_harness_on_the_smallest_settings_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "benchmarks", "--quick",
        "--params", "1000", "--clients", "2", "--rounds", "2", "--reference-reps", "1",
        "--actors", "1", "--no-librosa", "--train-seconds", "0.01",
        "--wire-sizes", "1000", "--wire-architectures", "none",
        "--out", str(out), "--name", "smoke", "--workdir", str(tmp_path),
    ]
    # One math thread: the smoke test checks plumbing, and on a busy shared machine (CI, other jobs)
    # torch's OpenMP threads waiting for each other would make it many times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    result = json.loads((out / "smoke.json").read_text())
    assert json.loads((out / "latest.json").read_text()) == result
    assert set(result) == {"meta", "sections"}
    assert set(result["sections"]) == {"round", "features", "train", "wire"}
    assert result["meta"]["mode"] == "quick" and result["meta"]["failures"] == []
    assert _positive(result["meta"]["duration_s"])

    (combo,) = result["sections"]["round"]["combos"]
    assert (combo["params"], combo["clients"], combo["rounds"]) == (1000, 2, 2)
    assert combo["verified"] is True
    assert len(combo["round_seconds"]) == 2 and all(_positive(x) for x in combo["round_seconds"])
    for key in ("median_round_s", "loopback_s", "weighted_sum_s", "reference_s", "ratio",
                "aggregator_peak_rss_mib", "aggregator_rss_ready_mib", "pull_bytes_per_client",
                "push_bytes_per_client", "bytes_per_round"):
        assert _positive(combo[key]), (key, combo[key])
    assert combo["bytes_per_round"] == 2 * (combo["pull_bytes_per_client"] + combo["push_bytes_per_client"])
    assert combo["aggregator_peak_rss_mib"] >= combo["aggregator_rss_ready_mib"]

    features = result["sections"]["features"]
    assert features["files"] == 36
    measured = [r for r in features["rows"] if r["files_per_s"] is not None]
    assert {r["preset"] for r in measured} >= {"seed"}
    assert all(_positive(r["files_per_s"]) and _positive(r["seconds"]) for r in measured)
    # --quick: every row twice, interleaved; the row is the median pass.
    assert features["passes"] == 2 and all(len(r["passes_s"]) == 2 for r in measured)
    assert all(min(r["passes_s"]) <= r["seconds"] <= max(r["passes_s"]) for r in measured)
    assert any(r["pipeline"].startswith("seed's way") and r["files_per_s"] is None for r in features["rows"])

    train = result["sections"]["train"]["rows"]
    assert {r["architecture"] for r in train} >= {"seed-cnn-v1"}
    assert all(_positive(r["samples_per_s"]) and _positive(r["samples"]) for r in train)

    wire = result["sections"]["wire"]["rows"]
    assert [(r["encoding"], r["pull_sent_as"]) for r in wire] == [
        ("float32", "float32"), ("fp16-delta", "float32"), ("int8-delta", "float32"),
        ("fp16-delta", "fp16-delta"), ("int8-delta", "int8-delta")]
    assert all(r["status"] == "measured" for r in wire)
    f32, fp16, int8, fp16_both, int8_both = wire
    assert f32["wire_bytes_per_round"] > f32["payload_bytes_per_round"] > 0
    # The encoded pushes really went through the aggregator, at about half and a quarter of the
    # bytes (a 1,000-parameter model: the safetensors header is a visible share of 4 kB).
    assert 1.8 <= fp16["push_cut"] <= 2.0 and 3.0 <= int8["push_cut"] <= 4.0
    assert int8["wire_up_bytes"] < fp16["wire_up_bytes"] < f32["wire_up_bytes"]
    # Compressed pulls: the second round's pull was the delta, so the round shrinks further.
    assert fp16_both["pull_payload_bytes"] < 0.6 * f32["pull_payload_bytes"]
    assert int8_both["pull_payload_bytes"] < fp16_both["pull_payload_bytes"]
    assert int8_both["round_cut"] > fp16_both["round_cut"] > fp16["round_cut"] > 1

    table = (out / "latest.md").read_text()
    for heading in ("## 1. Round overhead", "## 2. Aggregator peak RSS", "## 3. Feature extraction",
                    "## 4. Local training throughput", "## 5. Bytes on the wire"):
        assert heading in table


def test_compression_section_runs_the_targets_by_default_and_every_combination_when_asked() -> None:
    from benchmarks.compression import combinations
    from model.encodings import Encoding as E

    assert combinations(update_only=False) == [(E.FLOAT32, E.FLOAT32), (E.FLOAT16_DELTA, E.FLOAT16_DELTA),
                                               (E.INT8_DELTA, E.INT8_DELTA)]
    assert combinations(update_only=True) == [(E.FLOAT32, E.FLOAT32), (E.FLOAT16_DELTA, E.FLOAT32),
                                              (E.INT8_DELTA, E.FLOAT32), (E.FLOAT16_DELTA, E.FLOAT16_DELTA),
                                              (E.INT8_DELTA, E.INT8_DELTA)]


def test_round_harness_sends_each_client_exactly_what_the_production_client_would() -> None:
    """The shared, pre-serialized chunk messages plus the client's own tail are its whole payload, cut as
    fedser-client cuts it (1 MiB chunks, one chunk message each), and the header's checksum is of that payload."""
    import numpy as np

    from benchmarks.round_overhead import CHUNK_BYTES, build_round_payload
    from fedser.v1 import aggregator_pb2 as pb
    from fedser.v1.chunks import encode_chunk
    from model.serialization import arrays_to_bytes, iter_chunks, xxh3_hex

    rng = np.random.default_rng(0)
    arrays = {"a_big": rng.standard_normal(700_000).astype(np.float32),  # 2.7 MiB: two whole shared chunks
              "z_delta": rng.standard_normal(64).astype(np.float32)}
    pulled = arrays_to_bytes(arrays)
    header = pb.ModelHeader(round=1, model_version=0, total_bytes=len(pulled), xxh3_128=xxh3_hex(pulled))
    rp = build_round_payload(1, pulled, header, None, clients=3)
    assert len(rp.shared) == 2
    for k in range(3):
        expected = arrays_to_bytes({"a_big": rp.big, "z_delta": rp.client_small(k)})
        update_header, messages = rp.header_and_chunks(k, f"c{k}")
        sent = list(messages)
        assert sent[0].header == update_header
        assert update_header.total_bytes == len(expected) and update_header.xxh3_128 == xxh3_hex(expected)
        assert sent[1:] == [encode_chunk(c) for c in iter_chunks(expected, CHUNK_BYTES)]
        assert all(isinstance(m, bytes) for m in sent[1:])  # push_stub sends bytes as they are
    first, second = list(rp.header_and_chunks(0, "a")[1]), list(rp.header_and_chunks(1, "b")[1])
    assert first[1] is second[1]  # the shared chunk messages are the same objects, not copies
