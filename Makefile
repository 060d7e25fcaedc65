# Two commands on a fresh machine: `make demo` and `make test`. Both install what is missing
# (Debian's FFCV build libraries, then a virtual environment in .venv) before they run.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hide-installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO   ?= runs/demo
PYTEST_ARGS ?= -q

.PHONY: demo test install sysdeps bench clean

demo: $(STAMP)
	$(BIN)/python tools/convert.py embedded:train $(DEMO)/shards/train --shard-size 300
	$(BIN)/python tools/convert.py embedded:val $(DEMO)/shards/val --shard-size 300
	@echo "wrote:"; ls -l $(DEMO)/shards/train $(DEMO)/shards/val

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

bench: $(STAMP)
	$(BIN)/python tools/profile.py convert

clean:
	rm -rf $(VENV) runs .pytest_cache
