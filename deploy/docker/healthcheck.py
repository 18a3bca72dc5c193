#!/usr/bin/env python3
"""Container health checks for the fedser images (Docker HEALTHCHECK; Kubernetes uses its own probes).

  healthcheck.py grpc [--target HOST:PORT] [--service NAME] [--timeout S]
      Ask grpc.health.v1.Health/Check over plaintext. The default target is 127.0.0.1 at
      $FEDSER_HEALTH_PORT (the aggregator's plaintext health port), else $FEDSER_PORT, else 50051.
  healthcheck.py process NAME
      The container's main process (PID 1) runs NAME and is neither a zombie nor stopped.

Exit code 0: healthy; 1: unhealthy (one line on stderr says why).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def check_grpc(target: str, service: str, timeout_s: float) -> str | None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return f"{target}: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: service {service!r} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def check_process(name: str, proc: Path = Path("/proc/1")) -> str | None:
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError as exc:
        return f"cannot read {proc}: {exc}"
    if name not in cmdline:
        return f"main process is not {name}: {cmdline.strip()!r}"
    if state in ("Z", "T", "t", "X"):
        return f"main process {name} is in state {state}"
    return None


def default_target(env: dict[str, str]) -> str:
    port = env.get("FEDSER_HEALTH_PORT") or env.get("FEDSER_PORT") or "50051"
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("grpc", help="grpc.health.v1 check over plaintext")
    g.add_argument("--target", default=default_target(dict(os.environ)), help="HOST:PORT (default: %(default)s)")
    g.add_argument("--service", default="", help="service name to ask about ('' = the whole server)")
    g.add_argument("--timeout", type=float, default=3.0, help="seconds (default: %(default)s)")
    pr = sub.add_parser("process", help="PID 1 runs NAME and is alive")
    pr.add_argument("name")
    a = p.parse_args(argv)
    problem = check_grpc(a.target, a.service, a.timeout) if a.kind == "grpc" else check_process(a.name)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
