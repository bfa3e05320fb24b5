# Two commands for a new user: `make run` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.daikon-installed
# torch is installed first, pinned: an unpinned torch pulls several GB of CUDA wheels.
# On a GPU host pick the build you need, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run test test-fast docs chaos abuse lint typecheck train-models train-ar eval-quality bench bench-api clean

# -e '.[dev]': the client package (daikon/) and, as extras, the server's libraries and the test
# tools. The server (api/, worker/, db/, server/, ...) is not installed: it runs from this
# directory, where every target below starts it.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m server.launcher

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest

# The edit-test loop, a few minutes: everything but the tests that start worker processes
# (tests/e2e/), drive a browser or take minutes (docs/development.md, "The test layers").
test-fast: install
	$(PY) -m pytest -m "not e2e and not browser and not slow"

# The generated docs: docs/api.md's and docs/client.md's reference parts, docs/configuration.md.
docs: install
	$(PY) -m api.reference

# Fault injection against the real processes (docs/reliability.md); about 6 minutes.
chaos: install
	$(PY) -m chaos

# A hostile tenant's attacks replayed against `make run` (docs/reliability.md); about 3 minutes.
abuse: install
	$(PY) -m chaos.abuse

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy

# Retrain the committed shapes models from scratch (fixed seeds; about 90 min on 2 CPU cores).
train-models: install
	$(PY) -m training --out models
	$(PY) -m training.autoregressive --out models

# Only the autoregressive shapes model, models/shapes-ar (a tiny Janus), and its ranker
# models/shapes-ar-clip (tuned from models/shapes-clip); about 45 min on 2 CPU cores.
train-ar: install
	$(PY) -m training.autoregressive --out models

# Guidance, CLIP ranking, the token model beside diffusion and the edits, judged by the oracle
# -> docs/quality.md (about 10 min on CPU; --tokens only re-measures the token model alone).
eval-quality: install
	$(PY) -m training.evaluate --out docs

# Benchmark 4: API requests per second against a bare Flask route (needs wrk, PostgreSQL, Redis).
bench-api: install
	$(PY) bench/api.py

BENCH_STAMP := $(VENV)/.daikon-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Issue 14's benchmarks on this machine (docs/benchmarks.md); bench/gpu.py runs on a GPU host.
bench: $(BENCH_STAMP)
	$(PY) bench/service_vs_direct.py
	$(PY) bench/throughput.py --plot docs/benchmarks-batch.png
	$(PY) bench/api.py
	$(PY) bench/peers.py
	$(PY) bench/token_batching.py

clean:
	rm -rf $(VENV) .daikon .pytest_cache .ruff_cache .mypy_cache
