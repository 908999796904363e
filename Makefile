# Two commands: `make up` (install, then run the service) and `make test` (install, then check).
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch, from this machine's disk; on a GPU box: make up TORCH=torch
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
CHECK := gpt api worker migrations gptjobs

.PHONY: install dev up train test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e .

dev: $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"

# The nanoGPT README's CPU run, through gptjobs' engine: 2 to 3 minutes on two cores.
train: install
	$(BIN)/python -m gpt train --dataset=shakespeare_char --device=cpu --compile=False --eval_iters=20 \
		--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 \
		--max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 --out_dir=out-shakespeare-char

# The service on this machine: Redis, migrations, API on :8000, a training and a sampling
# worker. Ctrl-C stops it all.
up: install
	$(BIN)/gptjobs up

lint: dev
	$(BIN)/ruff check $(CHECK) tests bench
	$(BIN)/ruff format --check $(CHECK) tests bench
	$(BIN)/mypy $(CHECK)

# The modules where artifacts are written and read (checkpoints, datasets and uploads,
# imports and exports, samples, the client library's downloads, a DDP run's checkpoints, a
# warm shutdown's checkpoint, the worker and rank faults around them), again with every
# stack's artifacts on S3: moto's server on loopback, a stand-in for S3.
S3_TESTS := tests/integration/test_runs.py tests/integration/test_weights.py tests/integration/test_client_lib.py \
	tests/integration/test_datasets.py tests/integration/test_samples.py tests/integration/test_ddp.py \
	tests/integration/test_shutdown.py tests/faults/test_worker_faults.py tests/faults/test_prepare_faults.py \
	tests/faults/test_ddp_faults.py

test: lint
	$(BIN)/python -m pytest -q
	GPTJOBS_TEST_STORE=s3 $(BIN)/python -m pytest -q $(S3_TESTS)

# The tests that start no service (no redis-server, PostgreSQL or Chromium): a minute or two.
FAST := not integration and not faults and not browser and not postgres
test-fast: dev
	$(BIN)/python -m pytest -q -m "$(FAST)"

clean:
	rm -rf $(VENV) out-shakespeare-char .gptjobs
