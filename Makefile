# The README's two commands: `make demo` (the whole pipeline on the tiny default, CPU) and
# `make test` (the test suite). Both install on first use (scripts/install.sh: the Python
# packages, and Debian's WordNet when run as root with apt-get).
PYTHON ?= python3
export DS_ACCELERATOR ?= cpu
export OMP_NUM_THREADS ?= 1

.PHONY: demo test install bench

.installed: setup.py scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh

install: .installed

demo: .installed
	$(PYTHON) -m coin demo

test: .installed
	$(PYTHON) -m pytest tests

bench: .installed
	$(PYTHON) -m coin bench all
