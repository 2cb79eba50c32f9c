# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# TORCH is installed first, before the project, so pip never pulls another torch build;
# on a CUDA machine pick yours, e.g. `make demo TORCH="torch --index-url ..."`.
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) sweeps/curriculum_sweep.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/eval_throughput.py

clean:
	rm -rf runs .cache
