# `make demo` runs the main job, `make test` the test suite. Both create or reuse .venv.
VENV     ?= .venv
PY       := $(VENV)/bin/python
# The project declares a wide torch range; this pin is the local CPU build on our machines,
# installed first so pip does not resolve torch from scratch (several GB of CUDA wheels).
# Elsewhere: `make TORCH_SPEC="torch" test`, or install your own torch into .venv first.
TORCH_SPEC ?= torch==2.13.0
DATA_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: demo test bench data venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

data:
	@DATA_DIR="$(DATA_DIR)" bash scripts/ensure-fashion-mnist.sh

demo: venv data
	$(VENV)/bin/vitsam demo --data-dir "$(DATA_DIR)"

test: venv data
	$(PY) -m pytest

bench: venv data
	$(PY) -m pip install --quiet -e ".[dev,bench]"   # the baselines the benchmarks compare against (PyHessian)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
