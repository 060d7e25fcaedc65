# Two commands on a fresh machine: `make demo` and `make test`. Both install what is missing
# (Debian's FFCV build libraries, then a virtual environment in .venv) before they run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hide-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RECIPE ?=
DEMO   ?= runs/demo$(if $(RECIPE),_$(RECIPE))
PYTEST_ARGS ?= -q
NPROC  ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: demo test install sysdeps bench clean gpu-wheels gpu-check-dry

# The main job on the embedded default: train/configs/demo.yaml (a tiny ViT, iBOT + AttMask)
# on one CPU process; it prints the k-NN top-1 at the start and the end. RECIPE=mae|sdae|lcmae|extrema
# trains train/configs/demo_$(RECIPE).yaml instead (into runs/demo_$(RECIPE)). DEMO_ARGS adds
# key=value overrides (e.g. DEMO_ARGS="run.seed=1"). accelerate's launcher would set
# OMP_NUM_THREADS=1 (one torch thread) for a single process; the demo uses every core.
demo: $(STAMP)
	@if [ -n "$(RECIPE)" ] && [ ! -f train/configs/demo_$(RECIPE).yaml ]; then \
	  echo "make demo: RECIPE=$(RECIPE) has no train/configs/demo_$(RECIPE).yaml; use RECIPE=mae, sdae, lcmae or extrema (or none: iBOT + AttMask)" >&2; exit 2; fi
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
	    --num_cpu_threads_per_process $(NPROC) train.py $(if $(RECIPE),--config train/configs/demo_$(RECIPE).yaml) \
	    run.dir=$(DEMO) $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# FFCV compiles against OpenCV and libjpeg-turbo found through pkg-config.
sysdeps:
	@pkg-config --exists opencv4 libturbojpeg 2>/dev/null || { \
	  echo "installing libopencv-dev libturbojpeg0-dev pkg-config (needed to build FFCV)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopencv-dev libturbojpeg0-dev pkg-config; }

# torch first: FFCV and DeepSpeed are built from source against the installed torch/numpy,
# so they are installed without build isolation (no second 4 GB torch in a build env).
$(STAMP): pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory sysdeps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt "setuptools>=68" wheel torch torchvision numpy
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt --no-build-isolation -e ".[test]"
	@touch $@

# The GPU checks (tools/gpu_check.sh): the pure-Python wheels the GPU machine lacks, to carry
# there in .whl/ (ignored by git), and the rehearsal of every check on this CPU.
gpu-wheels: $(STAMP)
	mkdir -p .whl && $(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
	    omegaconf==2.4.0 webdataset==1.0.2 braceexpand==0.1.7 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0

gpu-check-dry: $(STAMP)
	OUT=runs/gpu_check_dry bash tools/gpu_check.sh --dry-run

bench: $(STAMP)
	$(BIN)/python tools/profile.py convert

clean:
	rm -rf $(VENV) runs .pytest_cache
