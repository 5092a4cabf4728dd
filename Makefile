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

# Code-path settings the suite must pass under (conftest.py's options; README "Tests").
# test-paths runs all of them (a few minutes each); CI runs PATHS_CI after `make test`.
PATHS_ALL = \
	"--nnx-threads 1 --nnx-cpu-kernels 0" \
	"--nnx-threads 2 --nnx-cpu-kernels 0" \
	"--nnx-threads 3 --nnx-cpu-kernels 0" \
	"--nnx-threads 1 --nnx-cpu-kernels 1" \
	"--nnx-threads 2 --nnx-cpu-kernels 1" \
	"--nnx-threads 3 --nnx-cpu-kernels 1" \
	"--nnx-cpu-kernels 1 --nnx-cpu-arch x86-64" \
	"--nnx-cpu-kernels 1 --nnx-cpu-arch x86-64-v3" \
	"--nnx-blas-threads 1"
PATHS_CI = \
	"--nnx-threads 3 --nnx-cpu-kernels 0" \
	"--nnx-threads 1 --nnx-cpu-kernels 1 --nnx-cpu-arch x86-64"
PATHS ?= $(PATHS_ALL)
# CI's extra rows skip the files whose code does not depend on these settings (CUDA kernels
# through nvcc/NVRTC/the simulator, CuPy conformance, the GPU check script, the wheel build,
# the SIGKILL crash test): `make test` has just run them.
PATHS_CI_SKIP = $(addprefix --ignore=tests/,test_gpu_check.py test_kernels_sim.py \
	test_kernels_edges_sim.py test_kernels_nvrtc.py test_kernels_nvcc.py \
	test_cupy_conformance.py test_backend_cuda.py test_wheel_kernels.py test_crash_safety.py \
	test_suite_setup.py)

.PHONY: train test test-paths test-paths-ci venv clean

$(VENV)/.nnx-core:
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e ".[progress,plot,digits,threads]"
	touch $@

# the test extra brings CuPy and the NVRTC wheels (no GPU needed), the mpi extra mpiexec for
# the multi-process tests; reinstall when it changes
$(VENV)/.nnx-test: $(VENV)/.nnx-core pyproject.toml
	$(VPY) -m pip install -q -e ".[test,mpi]"
ifneq ($(TORCH_WHEEL),)
	$(VPY) -m pip install -q "torch==2.13.0" || echo "PyTorch oracle not installed; its tests will skip"
endif
	touch $@

venv: $(VENV)/.nnx-core

train: $(VENV)/.nnx-core
	$(VPY) -m nnx.train --dataset cifar10 --model simple_cnn $(ARGS)

test: $(VENV)/.nnx-test
	$(VPY) -m pytest -q

# Each setting is a full run of the suite; -rfE: list failures and errors, not the GPU skips.
test-paths: $(VENV)/.nnx-test
	@for opts in $(PATHS); do \
		echo "== pytest $$opts"; $(VPY) -m pytest -q -rfE $(PYTEST_EXTRA) $$opts || exit 1; \
	done

test-paths-ci:
	$(MAKE) test-paths PATHS='$(PATHS_CI)' PYTEST_EXTRA='$(PATHS_CI_SKIP)'

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
