# fedser: `make demo` runs the demo federation, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := protos/fedser/v1/aggregator.proto

.PHONY: demo test protos reproduce clean venv bench

venv: $(STAMP)

# The editable install also compiles model/_mkl_intel_paths.c in place (model/mkl_dispatch.py).
$(STAMP): pyproject.toml model/_mkl_intel_paths.c
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedser demo $(DEMO_ARGS)

test: $(STAMP) deploy-tools
	$(PY) -m pytest $(PYTEST_ARGS)

# The non-Python tools of the deploy/ checks, each installed only when missing (.ci/install-tools):
# promtool + prometheus and systemd-analyze (Debian), node + the prometheus-operator CRD models (npm).
deploy-tools: $(STAMP)
	bash .ci/install-tools $(VENV)/fedser-tools

# The seed's experiment, reduced grid on the demo corpus: 40 rounds, FedAvgM (server momentum 0.6) with FedProx
# (mu 0.1), two runs at a time; 43 CPU min, 23 min wall on 2 idle cores (docs/RESULTS.md). REPRODUCE_ARGS=--full for
# the whole grid, "--server-momentum 0 --proximal-mu 0" for the seed's plain FedAvg.
reproduce: $(STAMP)
	$(VENV)/bin/fedser simulate --out results/simulate $(REPRODUCE_ARGS)

# Regenerate the Python protocol code from protos/ (committed; a test checks drift).
protos: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --grpc_python_out=protos --pyi_out=protos $(PROTO_SRC)

clean:
	rm -rf $(VENV) demo-output .pytest_cache build model/_mkl_intel_paths*.so

# Benchmarks (issue 6): results in benchmarks/results/, the table also in docs/PERFORMANCE.md.
# BENCH_ARGS=--quick (under 3 minutes), --full (larger corpus, longer runs), --only round,rss,...
bench: $(STAMP)
	$(PY) -c "import librosa" 2>/dev/null || $(VENV)/bin/pip install -q -e '.[dev,bench]'
	$(PY) -m benchmarks --update-docs $(BENCH_ARGS)
