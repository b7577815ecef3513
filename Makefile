# The README's commands. `make demo` and `make test` work on a fresh machine: they create a
# virtual environment in .venv and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
# The torch build to install when the environment has none (2.13.0 is what CI tests with;
# on a CUDA machine pass e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126").
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench study clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test,bench,onnx,kernels,openvino]"
	touch $(STAMP)

# The main job on the bundled sample: train the demo plan (all four phases) on the City100 crops,
# upscale a full-size photo (OpenVINO on a CPU where it is installed, exact global statistics),
# export the model to ONNX (checked against PyTorch) and upscale the photo again through ONNX Runtime. Rerunning resumes or reports that
# the run is finished and skips existing outputs (rm -rf runs/demo to start again).
PHOTO := mcan_deploy/samples/photo/city100_001_LR.png
demo: install
	$(BIN)/mcan-train --config demo --data sample --out runs/demo
	$(BIN)/mcan-upscale runs/demo/model.safetensors $(PHOTO) -o runs/demo/upscaled
	test -f runs/demo/model.onnx || $(BIN)/mcan-export runs/demo/model.safetensors -o runs/demo/model.onnx
	$(BIN)/mcan-upscale runs/demo/model.onnx $(PHOTO) -o runs/demo/upscaled-onnx
	@echo "demo: upscaled photo in runs/demo/upscaled/ (OpenVINO, or PyTorch without it) and runs/demo/upscaled-onnx/ (ONNX Runtime);"
	@echo "      training report in runs/demo/report.md"

# Lint and format checks first (seconds), then the tests, one pytest-xdist worker a core
# (worksteal: the long end-to-end tests do not wait behind a queue of short ones); mypy is one of
# the tests (tests/test_types.py), so it runs beside the others, not on one core before them.
LINTED := mcan_deploy tests benchmarks samples
test: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=15

bench: install
	$(BIN)/mcan-bench --quick --out benchmarks/results/bench-quick-cpu-$$(date +%Y%m%d)
	$(BIN)/python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/cpu-$$(date +%Y%m%d).json

# The report's experiments with error bars (docs/experiments.md): every experiment of configs/study/
# at the CPU scale, 3 seeds each, on the City100 Nikon pairs, one thread (timings are compared at
# equal threads); the camera experiment (camera.toml) also trains on the City100 iPhone pairs.
# Resumable; finished runs are found, not retrained. STUDY_SCALE=full runs the report's own
# configuration (a GPU job: --device auto picks CUDA; the camera experiment has only a CPU scale).
STUDY_DATA ?= ../shared/data/city100_nikon
STUDY_IPHONE ?= ../shared/data/city100_iphone
STUDY_SCALE ?= cpu
STUDY_EXPERIMENTS ?= $(if $(filter full,$(STUDY_SCALE)),$(filter-out configs/study/camera.toml,$(wildcard configs/study/*.toml)),configs/study/*.toml)
study: install
	OMP_NUM_THREADS=1 $(BIN)/mcan-study $(STUDY_EXPERIMENTS) --data $(STUDY_DATA) \
		--data nikon=$(STUDY_DATA) --data iphone=$(STUDY_IPHONE) --scale $(STUDY_SCALE) --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache
