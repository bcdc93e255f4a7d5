# Two commands: `make demo` (set up + run the main job) and `make test` (set up + run every test).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lab setup info bench clean

# Setup is re-run only when pyproject.toml changes (the stamp file records the last install).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m workbench.demo

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

info: $(STAMP)
	$(VENV)/bin/workbench info

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/kernels.py

clean:
	rm -rf $(VENV) runs .pytest_cache
