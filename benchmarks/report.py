"""The markdown table of one benchmark run (benchmarks/results/latest.md, docs/PERFORMANCE.md)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

DOC_BEGIN = "<!-- bench:begin (written by `make bench`; edit outside these markers) -->"
DOC_END = "<!-- bench:end -->"


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != x:
            return "n/a"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.2f}"
    return str(x)


def _mib(b: int | None) -> str:
    """Bytes in the largest unit that keeps them readable."""
    if b is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:,.2f} {unit}"
    return f"{b:,} B"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def render(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        f"# fedser benchmark: {m['mode']} run, {m['started']}",
        "",
        f"Machine: {m['machine'].get('cpu_count')} CPUs ({m['machine'].get('cpu_model', '?')}), "
        f"{m['machine'].get('mem_total_gib', '?')} GiB; load average at start "
        f"{m['machine'].get('loadavg_at_start')}, at end {m.get('loadavg_at_end')}. "
        f"Whole run: {m['duration_s']:.0f} s. Command: `{m['command']}`.",
    ]
    mkl = m["machine"].get("mkl_fast_paths")
    if mkl:
        lines += ["", f"MKL code paths (model/mkl_dispatch.py): {'fast' if mkl['active'] else 'default'}: {mkl['reason']}."]
    if m.get("note"):
        lines += ["", f"**Note:** {m['note']}"]
    sec = result["sections"]

    if "round" in sec:
        r = sec["round"]
        lines += ["", "## 1. Round overhead, no training (median of the rounds)", "",
                  "reference = loopback TCP time for the same bytes (N pulls + N pushes, one connection) "
                  "+ numpy FedAvg weighted sum of the N updates (float64 accumulator), measured right after each round "
                  "while the aggregator idles; ratio = median over the rounds of round / its own reference "
                  "(the columns give medians).", ""]
        lines += _table(
            ["params", "N", "rounds", "median round s", "pull phase s", "push phase s", "bytes per round",
             "loopback s", "weighted sum s", "reference s", "**ratio**", "aggregator CPU s / round",
             "harness CPU s / round"],
            [(c["params"], c["clients"], c["rounds"], c["median_round_s"], c["median_pull_phase_s"],
              c["median_push_phase_s"], _mib(c["bytes_per_round"]), c["loopback_s"], c["weighted_sum_s"],
              c["reference_s"], c["ratio"], _median_or_none(c["aggregator_cpu_s_per_round"]),
              _median_or_none(c["harness_cpu_s_per_round"]))
             for c in r["combos"]],
        )
        if r.get("skipped"):
            lines += ["", "Not run in this mode: "
                      + ", ".join(f"{p:,} params x N={n}" for p, n in r["skipped"])
                      + " (the default mode runs them all)."]
        if r.get("errors"):
            lines += ["", "Failed: " + "; ".join(r["errors"])]

        lines += ["", "## 2. Aggregator peak RSS against N", "",
                  "VmHWM of the aggregator process at the end of its run; 'at start' is VmRSS once it serves "
                  "(Python, torch, gRPC, the initial model).", ""]
        lines += _table(
            ["params", "model", "N", "concurrent pushes (bound)", "RSS at start MiB", "peak RSS MiB",
             "peak - start MiB", "(peak - start) / model"],
            [(c["params"], _mib(4 * c["params"]), c["clients"], c["push_concurrency"],
              c["aggregator_rss_ready_mib"], c["aggregator_peak_rss_mib"], _diff(c), _per_model(c))
             for c in r["combos"]],
        )

    if "features" in sec:
        f = sec["features"]
        lines += ["", f"## 3. Feature extraction ({f['files']} files, {f['actors']} synthetic actors, "
                  f"torch default threads {f['torch_threads']}; feature cache rows at the default)", "",
                  f"Every row ran {f.get('passes', 1)} times, interleaved with the others (librosa, fedser, ..., then "
                  "again); files/s is of the median pass, 'x seed's way' the median of the per-pass ratios to the "
                  "librosa pass of the same repetition.", ""]
        lines += _table(
            ["pipeline", "preset", "files/s", "x seed's way", "seconds", "note"],
            [(row["pipeline"], row["preset"], row["files_per_s"], row["speedup_vs_seed_way"], row["seconds"],
              _feature_note(row)) for row in f["rows"]],
        )

    if "train" in sec:
        t = sec["train"]
        lines += ["", f"## 4. Local training throughput (train_local, torch {t['torch']}, "
                  f"default {t['torch_threads']} CPU threads; CUDA available: {_fmt(t['cuda_available'])})", ""]
        lines += _table(
            ["architecture", "params", "input", "device", "CPU threads", "batch", "samples", "samples/s"],
            [(row["architecture"], row["params"], "x".join(map(str, row["input_shape"])), row["device"],
              row.get("cpu_threads"), row["batch"], row["samples"], row["samples_per_s"]) for row in t["rows"]],
        )
        if not t["cuda_available"]:
            lines += ["", "CUDA: not measured (no GPU on this machine)."]

    if "wire" in sec:
        w = sec["wire"]
        lines += ["", "## 5. Bytes on the wire per round per client (pull + push)", "",
                  "Every combination measured through a byte-counting TCP relay (HTTP/2 + gRPC framing included), "
                  "in a client's second round (it holds the previous version, so a compressing aggregator sends "
                  "the delta). 'update cut' = float32 push payload / this push payload; 'round cut' = float32 wire "
                  "bytes per round / this combination's.", ""]
        lines += _table(
            ["model", "params", "update encoding", "pull encoding", "pull payload", "push payload",
             "payload per round", "measured on the wire", "framing overhead", "**update cut**", "**round cut**"],
            [(row["model"], row["params"], row["encoding"], row.get("pull_sent_as", "float32"),
              _mib(row["pull_payload_bytes"]), _mib(row["push_payload_bytes"]), _mib(row["payload_bytes_per_round"]),
              _mib(row["wire_bytes_per_round"]) if row.get("wire_bytes_per_round") is not None else "-",
              f"{100 * row['framing_overhead']:.3f} %" if row.get("framing_overhead") is not None else "-",
              _fmt(row.get("push_cut")), _fmt(row.get("round_cut"))) for row in w["rows"]],
        )
    acc = sec.get("compression")
    if acc:
        lines += _compression_lines(acc)
    return "\n".join(lines) + "\n"


def _compression_lines(acc: dict[str, Any]) -> list[str]:
    """Section 6: scores and paired losses per encoding, and whether the 1-point target is met."""
    pool, demo = acc["pool"], acc["demo_heldout"]
    lines = ["", f"## 6. Held-out accuracy with each encoding (the demo task: {acc['setup']})", "",
             "Each seed is one demo federation per encoding (production aggregator and client loop in one "
             "process, one run per core): the same corpus, split, initial model and schedule; only "
             "--update-encoding (and, 'both ways', the aggregator's --pull-encoding) differs. Scores: mean of "
             f"the last {acc['tail_rounds']} global versions on the pool ({pool['speakers']} synthetic speakers "
             f"no run trains on, {pool['files']:,} files) and on the demo's own held-out speakers "
             f"({demo['speakers']}, {demo['files']} files). 'loss' = float32 minus this encoding with the same "
             "seed, mean over seeds ± its standard error, in accuracy points (target: at most 1). 'rounding "
             "error' = what the encoding drops of the last round's change of the float32 runs' global model, "
             "as a share of that change's sum of squares (mean over seeds).", ""]
    lines += _table(
        ["encoding", "seeds", "pool accuracy", "pool UAR", "demo held-out accuracy",
         "**loss on the pool, points**", "loss on the demo's held-out, points", "pool loss per seed",
         "rounding error", "run seconds"],
        [(r["encoding"], r["seeds"], _fmt(r["pool_accuracy"]), _fmt(r["pool_uar"]), _fmt(r["demo_accuracy"]),
          *((_loss(r["pool_loss_points"], r["pool_loss_se"]), _loss(r["demo_loss_points"], r["demo_loss_se"]),
             ", ".join(_fmt(x) for x in r["pool_loss_per_seed"])) if r["encoding"] != "float32"
            else ("reference", "reference", "")),
          _fmt(r.get("rounding_error")) if r.get("rounding_error") is not None else "-",
          _fmt(r["seconds"])) for r in acc["rows"]],
    )
    verdicts = [f"{r['encoding']} {'met' if r['pool_loss_points'] <= 1 else 'missed'}"
                for r in acc["rows"] if r["encoding"] != "float32"]
    lines += ["", f"Target (pool loss at most 1 point): {'; '.join(verdicts)}. Section time {acc['seconds']:.0f} s "
                  f"({acc['jobs']} runs at once; corpora and features {acc['prepare_seconds']:.0f} s)."]
    return lines


def _loss(mean: float, se: float | None) -> str:
    return _fmt(mean) if se is None else f"{_fmt(mean)} ± {_fmt(se)}"


def _median_or_none(xs: list[float | None]) -> float | None:
    vals = sorted(x for x in xs if x is not None)
    return vals[len(vals) // 2] if vals else None


def _diff(c: dict[str, Any]) -> float | None:
    if c["aggregator_peak_rss_mib"] is None or c["aggregator_rss_ready_mib"] is None:
        return None
    return round(c["aggregator_peak_rss_mib"] - c["aggregator_rss_ready_mib"], 1)


def _per_model(c: dict[str, Any]) -> float | None:
    d = _diff(c)
    return None if d is None else round(d / (4 * c["params"] / 2**20), 1)


def _feature_note(row: dict[str, Any]) -> str:
    parts = [row["note"]] if row.get("note") else []
    if row.get("first_call_s") is not None:
        parts.append(f"warm-up (untimed) {row['first_call_s']:.2f} s")
    if row.get("max_abs_diff_vs_librosa") is not None:
        parts.append(f"max abs diff vs librosa {row['max_abs_diff_vs_librosa']}")
    if row.get("hits") is not None:
        parts.append(f"hits {row['hits']}, misses {row['misses']}")
    return "; ".join(parts)


def update_doc(doc: Path, table: str) -> bool:
    """Replace the block between the bench markers in ``doc``; False when the markers are missing."""
    if not doc.exists():
        return False
    text = doc.read_text()
    pattern = re.compile(re.escape(DOC_BEGIN) + r".*?" + re.escape(DOC_END), re.S)
    if not pattern.search(text):
        return False
    body = re.sub(r"^## ", "#### ", table, flags=re.M)
    body = re.sub(r"^# ", "### ", body, count=1, flags=re.M)
    doc.write_text(pattern.sub(lambda _: f"{DOC_BEGIN}\n\n{body}\n{DOC_END}", text))
    return True
