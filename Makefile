# Quick start: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# The torch build to install; override for another CUDA or a CPU-only wheel index.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DEMO   ?= build/demo

.PHONY: demo test lint bench clean gpu-check gpu-wheels gpu-rehearsal

$(VENV)/.core: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The whole mission on embedded data, a few minutes on 2 cores: a two-camera dataset from the virtual
# camera, prepare (output scale 2: full-resolution photos), train the recommended network (tiny preset,
# its default schedule), fit a colour profile, evaluate the classical pipeline, the profile and the model
# under one protocol, convert a held-out DNG all three ways, export, and a report. Every stage is cached:
# a second `make demo` redoes nothing.
R2R     := $(VENV)/bin/raw2rgb
HELDOUT := chelsea# in the val split at --seed 0 (splits are by scene; the colour chart is in train)
demo: $(VENV)/.core
	@mkdir -p $(DEMO)
	$(R2R) synth -o $(DEMO)/raw --pairs --size 512 768
	$(R2R) unpack $(DEMO)/raw -o $(DEMO)/packed --jobs 2
	$(R2R) prepare $(DEMO)/raw -o $(DEMO)/dataset --patch-size 64 --split 0.7,0.3,0 --seed 0 --copies 2 \
	    --min-inliers 12
	$(R2R) inspect $(DEMO)/dataset
	$(R2R) train $(DEMO)/dataset -o $(DEMO)/run --preset tiny --perceptual-weight 0 --log-every 50
	$(R2R) profile fit $(DEMO)/dataset -o $(DEMO)/profile.json
	$(R2R) evaluate $(DEMO)/dataset --method isp -o $(DEMO)/eval/isp
	$(R2R) evaluate $(DEMO)/dataset --profile $(DEMO)/profile.json -o $(DEMO)/eval/profile
	$(R2R) evaluate $(DEMO)/dataset --checkpoint $(DEMO)/run -o $(DEMO)/eval/model
	$(R2R) convert $(DEMO)/raw/$(HELDOUT).dng -o $(DEMO)/convert/isp --method isp
	$(R2R) convert $(DEMO)/raw/$(HELDOUT).dng -o $(DEMO)/convert/profile --profile $(DEMO)/profile.json
	$(R2R) convert $(DEMO)/raw/$(HELDOUT).dng -o $(DEMO)/convert/model --checkpoint $(DEMO)/run
	$(R2R) export $(DEMO)/run --pt2 $(DEMO)/generator.pt2
	@# files without colour metadata (ZRR's layout, a light per scene): a profile under the dataset white-balance rule
	$(R2R) synth --zrr --light varying --size 512 768 --crop 256 -o $(DEMO)/zrr/raw
	$(R2R) prepare $(DEMO)/zrr/raw -o $(DEMO)/zrr/dataset --layout zrr --patch-size 64 --split 1,0,0 --scale 2
	$(R2R) profile fit $(DEMO)/zrr/dataset --white-balance dataset -o $(DEMO)/zrr/profile.json
	$(R2R) evaluate $(DEMO)/zrr/dataset --split test --profile $(DEMO)/zrr/profile.json -o $(DEMO)/zrr/eval
	@# a photographer's shoot: RAW files alone, the camera's smaller JPEG inside each (the RAW binned to it, the
	@# right-hand band of the one frame held out), the look learned and applied to the folder
	$(R2R) synth --shoot --embedded --size 2048 3072 -o $(DEMO)/shoot
	$(R2R) prepare $(DEMO)/shoot -o $(DEMO)/shoot-dataset
	$(R2R) train $(DEMO)/shoot-dataset -o $(DEMO)/shoot-run --preset tiny
	$(R2R) profile fit $(DEMO)/shoot-dataset -o $(DEMO)/shoot-profile.json
	$(R2R) evaluate $(DEMO)/shoot-dataset --split test --method isp -o $(DEMO)/shoot-eval/isp
	$(R2R) evaluate $(DEMO)/shoot-dataset --split test --profile $(DEMO)/shoot-profile.json -o $(DEMO)/shoot-eval/profile
	$(R2R) evaluate $(DEMO)/shoot-dataset --split test --checkpoint $(DEMO)/shoot-run -o $(DEMO)/shoot-eval/model
	$(R2R) convert $(DEMO)/shoot -o $(DEMO)/shoot-look --checkpoint $(DEMO)/shoot-run --format jpg
	$(R2R) report $(DEMO)/run --dataset $(DEMO)/dataset --profile $(DEMO)/profile.json -o $(DEMO)/report.html \
	    --image "$(HELDOUT).dng, classical pipeline=$(DEMO)/convert/isp/$(HELDOUT).png" \
	    --image "$(HELDOUT).dng, fitted colour profile=$(DEMO)/convert/profile/$(HELDOUT).png" \
	    --image "$(HELDOUT).dng, trained model=$(DEMO)/convert/model/$(HELDOUT).png" \
	    --image "$(HELDOUT).dng, the other camera's JPEG (target)=$(DEMO)/raw/$(HELDOUT).jpg"
	@echo
	@echo "demo: RAW+JPEG pairs (virtual camera; JPEGs from 'another camera')   $(DEMO)/raw"
	@echo "demo: packed RAW (4-channel 16-bit PNG + JSON sidecar)                 $(DEMO)/packed"
	@echo "demo: dataset (unpack, patches, saliency, shards; splits by scene)     $(DEMO)/dataset"
	@echo "demo: training run (config, stats.jsonl, checkpoints, samples, TB)     $(DEMO)/run"
	@echo "demo: colour profile fitted on the train split                         $(DEMO)/profile.json"
	@echo "demo: metrics: classical, profile, model (per_image.csv, summary.json) $(DEMO)/eval"
	@echo "demo: $(HELDOUT).dng converted all three ways, at full resolution       $(DEMO)/convert"
	@echo "demo: exported generator (torch.export)                               $(DEMO)/generator.pt2"
	@echo "demo: report                                                           $(DEMO)/report.html, $(DEMO)/report.png"
	@echo "demo: ZRR layout without colour metadata: profile by the dataset rule   $(DEMO)/zrr"
	@echo "demo: a shoot's own look (RAW alone, its embedded JPEG; a held-out band) $(DEMO)/shoot-look"
	@$(PY) -c "import json; r = {m: json.load(open('$(DEMO)/eval/' + m + '/summary.json')) for m in ('isp', 'profile', 'model')}; \
	    print('\n'.join(f'demo: {m:8s} PSNR {v[\"psnr\"]:.2f} dB  SSIM {v[\"ssim\"]:.4f}' for m, v in r.items()))"
	@$(PY) -c "import json; r = {m: json.load(open('$(DEMO)/shoot-eval/' + m + '/summary.json')) for m in ('isp', 'profile', 'model')}; \
	    print('\n'.join(f'demo: shoot, held-out band: {m:8s} PSNR {v[\"psnr\"]:.2f} dB  SSIM {v[\"ssim\"]:.4f}' for m, v in r.items()))"

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check raw2rgb tests benchmarks

bench: $(VENV)/.core
	$(PY) benchmarks/unpack.py
	$(PY) benchmarks/saliency.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/convert.py

# The minutes a GPU machine is lent: one prepared command (docs/gpus.md), `benchmarks/gpu_device.sh`, which
# installs the carried wheels and runs benchmarks/gpu_check.py; every figure into $$OUT/gpu-check.json.
# That machine has Python 3.12, torch and most of what raw2rgb needs, no package index, and not these:
GPU_MISSING := rawpy imagecodecs pypng exifread
WHEEL_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
GPU_PYVER ?= 3.12
GPU_WHEELS ?= build/wheels
gpu-wheels:
	rm -rf $(GPU_WHEELS)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PYVER) --implementation cp \
	    $(WHEEL_PLATFORMS) -d $(GPU_WHEELS) $(GPU_MISSING)

# The same command on this machine, as the GPU machine will run it: a clean environment holding only what
# that machine has preinstalled (its image's list, less what raw2rgb never imports), wheels for this Python
# installed from a folder exactly as there (--no-index --no-deps --target), Python started with -S so that
# nothing is imported for free. CUDA parts say "no CUDA"; the rest runs to the end on the CPU.
REHEARSAL := build/rehearsal
GPU_PREINSTALLED := $(TORCH) numpy h5py opencv-python-headless scikit-image scipy pillow tifffile imageio click \
    joblib tqdm tensorboard matplotlib onnx onnxscript onnxruntime pytest pytest-timeout
$(REHEARSAL)/env/.ok:
	rm -rf $(REHEARSAL)/env
	$(PYTHON) -m venv $(REHEARSAL)/env
	$(REHEARSAL)/env/bin/python -m pip install -q $(GPU_PREINSTALLED)
	touch $@
REHEARSAL_SITE = $(shell $(REHEARSAL)/env/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
gpu-rehearsal: $(REHEARSAL)/env/.ok
	$(MAKE) --no-print-directory gpu-wheels GPU_PYVER=$(shell $(REHEARSAL)/env/bin/python -c \
	    "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')") GPU_WHEELS=$(REHEARSAL)/wheels
	rm -rf $(REHEARSAL)/site
	OUT=$${OUT:-$(REHEARSAL)/out} GPU_PYTHON=$(REHEARSAL)/env/bin/python GPU_PYFLAGS=-S GPU_SITE=$(REHEARSAL)/site \
	    GPU_WHEELS=$(REHEARSAL)/wheels PYTHONPATH=$(REHEARSAL_SITE) bash benchmarks/gpu_device.sh

# The check with this machine's venv (no wheels, no clean environment): quicker, less faithful.
gpu-check: $(VENV)/.core
	PYTHONPATH=. $(PY) benchmarks/gpu_check.py

clean:
	rm -rf build $(VENV) *.egg-info .pytest_cache
