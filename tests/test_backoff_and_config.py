"""Tests for the client's reconnect backoff (edge_client/backoff.py) and the
aggregator's flag/environment configuration (aggregator_service/config.py).
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from aggregator_service.config import AggregatorConfig, parse_config
from edge_client.backoff import BackoffPolicy

# -- backoff -------------------------------------------------------------------

# Default policy: initial 0.5 s, x2, capped at 30 s.
DEFAULT_CEILINGS = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def _take(policy: BackoffPolicy, seed: int, n: int) -> list[float]:
    return list(itertools.islice(policy.delays(random.Random(seed)), n))


def test_default_policy_values():
    p = BackoffPolicy()
    assert (p.initial_s, p.multiplier, p.max_s) == (0.5, 2.0, 30.0)


@pytest.mark.parametrize("seed", range(20))
def test_delays_within_full_jitter_bounds(seed):
    delays = _take(BackoffPolicy(), seed, len(DEFAULT_CEILINGS))
    for i, (d, ceiling) in enumerate(zip(delays, DEFAULT_CEILINGS)):
        assert 0.0 <= d <= ceiling, (i, d, ceiling)


def test_delays_are_uniform_draws_under_the_ceiling():
    # Same seed, same draws: delay i == Random(seed).uniform(0, ceiling_i).
    rng = random.Random(7)
    expected = [rng.uniform(0.0, c) for c in DEFAULT_CEILINGS]
    assert _take(BackoffPolicy(), 7, len(DEFAULT_CEILINGS)) == expected


def test_ceiling_is_capped_at_max():
    # From retry 6 on the ceiling is 30 s: many draws reach above 16 s but none above 30 s.
    late = [d for seed in range(50) for d in _take(BackoffPolicy(), seed, 40)[6:]]
    assert max(late) <= 30.0
    assert max(late) > 29.0
    assert sum(d > 16.0 for d in late) > len(late) // 4


def test_custom_policy_bounds():
    policy = BackoffPolicy(initial_s=1.0, multiplier=3.0, max_s=10.0)
    ceilings = [1.0, 3.0, 9.0, 10.0, 10.0]
    for seed in range(30):
        for d, c in zip(_take(policy, seed, 5), ceilings):
            assert 0.0 <= d <= c


def test_different_seeds_give_different_delays():
    a = _take(BackoffPolicy(), 1, 8)
    b = _take(BackoffPolicy(), 2, 8)
    assert a != b
    assert all(x != y for x, y in zip(a, b))
    assert _take(BackoffPolicy(), 1, 8) == a


def test_first_delay_capped_when_initial_exceeds_max():
    policy = BackoffPolicy(initial_s=60.0, multiplier=2.0, max_s=30.0)
    firsts = [next(policy.delays(random.Random(seed))) for seed in range(20)]
    assert max(firsts) <= 30.0


# -- config --------------------------------------------------------------------


def test_defaults():
    c = parse_config(["--insecure"], {})
    assert isinstance(c, AggregatorConfig)
    assert (c.host, c.port, c.metrics_host, c.metrics_port) == ("127.0.0.1", 50051, "127.0.0.1", 9100)
    assert c.checkpoint_dir == Path("checkpoints")
    assert (c.keep_checkpoints, c.architecture, c.seed, c.max_workers) == (5, "seed-cnn-v1", 0, 64)
    assert c.ready_file is None and c.log_level == "info"
    r = c.rounds
    assert (r.clients_per_round, r.min_clients, r.round_timeout_s, r.max_rounds, r.max_samples) == (
        3, 2, 300.0, 0, 10_000_000,
    )
    assert (r.plan.local_epochs, r.plan.batch_size, r.plan.learning_rate, r.plan.proximal_mu) == (2, 16, 1e-3, 0.0)


def test_flags_override_defaults():
    c = parse_config(
        [
            "--insecure", "--host", "0.0.0.0", "--port", "6000", "--metrics-port", "0",
            "--checkpoint-dir", "/tmp/ck", "--clients-per-round", "5", "--min-clients", "4",
            "--round-timeout", "12.5", "--rounds", "7", "--local-epochs", "3", "--batch-size", "8",
            "--learning-rate", "0.01", "--proximal-mu", "0.05", "--max-workers", "2", "--ready-file", "ready.json",
        ],
        {},
    )
    assert (c.host, c.port, c.metrics_port) == ("0.0.0.0", 6000, 0)
    assert c.checkpoint_dir == Path("/tmp/ck")
    assert c.ready_file == Path("ready.json")
    r = c.rounds
    assert (r.clients_per_round, r.min_clients, r.round_timeout_s, r.max_rounds) == (5, 4, 12.5, 7)
    assert (r.plan.local_epochs, r.plan.batch_size, r.plan.learning_rate, r.plan.proximal_mu) == (3, 8, 0.01, 0.05)
    assert c.max_workers == 4  # raised to the floor of 4


ENV = {"FEDSER_PORT": "7000", "FEDSER_CLIENTS_PER_ROUND": "4", "FEDSER_ROUND_TIMEOUT": "60"}


def test_env_sets_defaults():
    c = parse_config(["--insecure"], ENV)
    assert c.port == 7000 and isinstance(c.port, int)
    assert c.rounds.clients_per_round == 4
    assert c.rounds.round_timeout_s == 60.0 and isinstance(c.rounds.round_timeout_s, float)
    assert c.rounds.min_clients == 2  # untouched


def test_flags_win_over_env():
    c = parse_config(["--insecure", "--port", "8000", "--clients-per-round", "6", "--round-timeout", "1.5"], ENV)
    assert c.port == 8000
    assert c.rounds.clients_per_round == 6
    assert c.rounds.round_timeout_s == 1.5


def test_flag_wins_over_bad_env_value():
    assert parse_config(["--insecure", "--port", "9000"], {"FEDSER_PORT": "abc"}).port == 9000


def test_other_env_vars_are_ignored():
    assert parse_config(["--insecure"], {"PORT": "1", "FEDSER_UNKNOWN": "x"}).port == 50051


def _exit_message(capsys, argv, env) -> str:
    with pytest.raises(SystemExit) as excinfo:
        parse_config(["--insecure", *argv], env)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fedser-aggregator")
    return err


def test_bad_env_value_exits(capsys):
    err = _exit_message(capsys, [], {"FEDSER_PORT": "abc"})
    assert "error: argument --port: invalid int value: 'abc'" in err


def test_bad_env_float_exits(capsys):
    err = _exit_message(capsys, [], {"FEDSER_ROUND_TIMEOUT": "soon"})
    assert "error: argument --round-timeout: invalid float value: 'soon'" in err


def test_min_clients_above_clients_per_round_exits(capsys):
    err = _exit_message(capsys, ["--clients-per-round", "2", "--min-clients", "3"], {})
    assert "error: min_clients must be between 1 and clients_per_round" in err


def test_min_clients_above_env_clients_per_round_exits(capsys):
    err = _exit_message(capsys, ["--min-clients", "5"], ENV)
    assert "error: min_clients must be between 1 and clients_per_round" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "70000"], "error: --port must be 0..65535"),
        (["--metrics-port", "-1"], "error: --metrics-port must be 0..65535"),
        (["--architecture", "vgg"], "error: unknown architecture 'vgg'; known: seed-cnn-v1"),
        (["--batch-size", "0"], "error: local_epochs and batch_size must be >= 1 and learning_rate > 0"),
        (["--learning-rate", "0"], "error: local_epochs and batch_size must be >= 1 and learning_rate > 0"),
        (["--round-timeout", "0"], "error: round_timeout_s must be > 0"),
        (["--proximal-mu", "-1"], "error: proximal_mu must be a finite number >= 0"),
        (["--rounds", "-1"], "error: max_rounds must be >= 0"),
        (["--port", "x"], "error: argument --port: invalid int value: 'x'"),
    ],
)
def test_invalid_values_exit(capsys, argv, message):
    assert message in _exit_message(capsys, argv, {})


def test_limits_are_configurable():
    c = parse_config(["--insecure", "--max-streams-per-client", "3", "--max-chunk-bytes", "2048",
                      "--size-margin-bytes", "0"], {"FEDSER_MAX_SAMPLES": "500"})
    assert (c.limits.max_streams_per_client, c.limits.max_chunk_bytes, c.limits.size_margin_bytes) == (3, 2048, 0)
    assert c.rounds.max_samples == 500


def test_memory_bounds_are_configurable(capsys):
    c = parse_config(["--insecure", "--receive-buffer-mb", "512", "--max-pull-sends", "4", "--busy-wait", "5"],
                     {})
    assert (c.limits.receive_buffer_bytes, c.limits.max_concurrent_pull_sends, c.limits.max_buffer_wait_s) == (
        512 << 20, 4, 5.0)
    d = parse_config(["--insecure"], {"FEDSER_RECEIVE_BUFFER_MB": "64"})
    assert d.limits.receive_buffer_bytes == 64 << 20
    assert "--max-pull-sends >= 1" in _exit_message(capsys, ["--insecure", "--max-pull-sends", "0"], {})
