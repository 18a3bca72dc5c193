"""The committed Python protocol code must be exactly what `make protos` generates from protos/."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["aggregator_pb2.py", "aggregator_pb2_grpc.py", "aggregator_pb2.pyi"]


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    src = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", src, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    proto = "fedser/v1/aggregator.proto"
    # The same command as `make protos`, run on a copy of the .proto files.
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", "--python_out=protos", "--grpc_python_out=protos",
         "--pyi_out=protos", f"protos/{proto}"],
        cwd=tmp_path, check=True,
    )
    for name in GENERATED:
        fresh = (src / "fedser" / "v1" / name).read_text()
        committed = (ROOT / "protos" / "fedser" / "v1" / name).read_text()
        assert fresh == committed, f"protos/fedser/v1/{name} is stale: run `make protos` and commit the result"
