# Set-up, demo and tests. `make demo` and `make test` work on a fresh machine with Python 3.10+.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch: an unpinned torch makes pip fetch a multi-GB CUDA build.
# On a GPU machine, override it, e.g. `make setup TORCH_SPEC="torch>=2.4"`.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup fetch demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[torch,qp,dev]"
	touch $@

fetch: setup
	$(VENV)/bin/idopt -v fetch

# The main job on the built-in real default: SmolLM2-135M-Instruct, a pool of BIG-bench tasks
# and HumanEval, and three examples from each of three Big-Bench-Hard tasks as targets.
demo: fetch
	$(VENV)/bin/idopt -v select --output $(DEMO_OUT) --grad-mask 4194304

test: fetch
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
