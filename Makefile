# The README's two commands: `make train` (main job) and `make test` (whole suite).
# Both build a virtual environment in .venv from nothing but Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
# Extra arguments for the trainer, e.g. make train ARGS="--dataset digits --epochs 5"
ARGS   ?=
# PyTorch is an optional oracle for the tests; install it only where a local wheel exists
# (a registry install would pull several GB of CUDA packages).
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0*.whl))

.PHONY: train test venv clean

$(VENV)/.nnx-core:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e ".[progress,plot,digits,threads]"
	touch $@

$(VENV)/.nnx-test: $(VENV)/.nnx-core
	$(VPY) -m pip install -q -e ".[test]"
ifneq ($(TORCH_WHEEL),)
	$(VPY) -m pip install -q "torch==2.13.0" || echo "PyTorch oracle not installed; its tests will skip"
endif
	touch $@

venv: $(VENV)/.nnx-core

train: $(VENV)/.nnx-core
	$(VPY) -m nnx.train --dataset cifar10 --model simple_cnn $(ARGS)

test: $(VENV)/.nnx-test
	$(VPY) -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
