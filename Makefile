# Two commands: `make demo` (set up + run the main job) and `make test` (set up + run every test).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU runs go faster on jemalloc (workbench/cpu_allocator.py): an "env LD_PRELOAD=..." prefix, empty without it
ALLOC  = $(shell $(PY) -m workbench.cpu_allocator --env 2>/dev/null)

.PHONY: demo test lab setup info bench clean

# Setup is re-run only when pyproject.toml changes (the stamp file records the last install).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	-$(PY) -m workbench.cpu_allocator --fetch
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(ALLOC) $(PY) -m workbench.demo

test: $(STAMP)
	$(PY) -m pytest -q

# as root (containers, workshop VMs) Jupyter refuses to start without --allow-root
lab: $(STAMP)
	$(ALLOC) $(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

info: $(STAMP)
	$(VENV)/bin/workbench info

bench: $(STAMP)
	$(ALLOC) $(PY) benchmarks/train_throughput.py
	$(ALLOC) $(PY) benchmarks/kernels.py

clean:
	rm -rf $(VENV) runs .pytest_cache
