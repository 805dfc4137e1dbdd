# The README's two commands: `make demo` (the whole pipeline on the tiny default, CPU) and
# `make test` (the test suite). Both install the package on first use.
PYTHON ?= python3
export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1

.PHONY: demo test install bench

.installed: setup.py scripts/install.sh
	bash scripts/install.sh

install: .installed

demo: .installed
	$(PYTHON) -m coin demo

test: .installed
	$(PYTHON) -m pytest tests

bench: .installed
	$(PYTHON) -m coin bench all
