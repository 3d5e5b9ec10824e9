# Quick start: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The torch build to install; override for another CUDA or a CPU-only wheel index.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO   ?= build/demo

.PHONY: demo test lint bench clean

$(VENV)/.core: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.core
	@mkdir -p $(DEMO)
	$(VENV)/bin/raw2rgb synth -o $(DEMO)/raw
	$(VENV)/bin/raw2rgb unpack $(DEMO)/raw -o $(DEMO)/packed --jobs 2
	$(VENV)/bin/raw2rgb saliency $(DEMO)/raw -o $(DEMO)/saliency --shard-size 2
	$(VENV)/bin/raw2rgb prepare $(DEMO)/raw -o $(DEMO)/dataset --patch-size 64 --split 0.75,0.25,0 --seed 1 --copies 2
	$(VENV)/bin/raw2rgb inspect $(DEMO)/dataset
	@echo "demo: packed RAW (4-channel 16-bit PNG + JSON sidecar) in $(DEMO)/packed"
	@echo "demo: saliency maps of the camera JPEGs (HDF5 shards) in $(DEMO)/saliency"
	@echo "demo: a paired dataset (raw+jpeg layout: aligned, cut, scored, labelled, sharded) in $(DEMO)/dataset"

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check raw2rgb tests benchmarks

bench: $(VENV)/.core
	$(PY) benchmarks/unpack.py
	$(PY) benchmarks/saliency.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/loader.py

clean:
	rm -rf build $(VENV) *.egg-info .pytest_cache
