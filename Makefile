# SciGPT — the two commands a new user needs (README.md): `make demo` and `make test`.
# Both work on a fresh Debian machine as root: system packages via apt-get, Python packages into
# a fresh venv with the CPU build of torch pinned through constraints-cpu.txt.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_PACKAGES := openmpi-bin libopenmpi-dev slurmctld slurmd slurm-client munge gcc
PYTEST_ARGS ?=

.PHONY: demo test system-deps venv lint clean gpu-wheelhouse

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "install as root: apt-get install --no-install-recommends$$missing"; exit 1; fi; \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# ibm2ieee (the tests' IBM-float reference, `dev` extra) has only wheels built for numpy 1, which
# fail to import under numpy 2, and its sdist's isolated build pins a numpy 1 toolchain that no
# longer builds: it is compiled from its sdist against the numpy installed here, before the rest.
$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt 'numpy>=1.26' setuptools wheel
	$(PIP) install -q -c constraints-cpu.txt --no-build-isolation --no-binary ibm2ieee 'ibm2ieee>=1.3.3'
	$(PIP) install -q -c constraints-cpu.txt -e '.[dev,mpi,formats,dali,kernels,tracking]'
	@touch $(STAMP)

venv: system-deps $(STAMP)

demo: venv
	OMP_NUM_THREADS=2 $(VENV)/bin/scigpt demo

# Everything the offline GPU suite installs beyond the GPU image (benchmarks/gpu_wheelhouse.py):
# carry .whl/gpu to the GPU machine. The tests rehearse the suite's install from it.
gpu-wheelhouse: venv
	$(PY) benchmarks/gpu_wheelhouse.py --out .whl/gpu

test: venv gpu-wheelhouse
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build dist *.egg-info
