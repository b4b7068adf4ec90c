# make example   set up what is missing, then train the example model (models/example.pt)
# make test      set up what is missing, then run the test suite
# make setup     only the set-up: ./.venv with torch (CPU build unless an NVIDIA GPU is visible)
# make lammps    set up what is missing, then build the LAMMPS plugin (pair_style e3pot)
#
# E3POT_ENV=active make test   uses the active environment instead of ./.venv
# See scripts/setup_env.sh for the other variables (PYTHON, TORCH_VERSION, TORCH_BUILD).

E3POT_ENV ?= .venv
export E3POT_ENV

ifeq ($(E3POT_ENV),active)
# the interpreter that scripts/setup_env.sh sets up: python, else python3
RUN := $(or $(shell command -v python || command -v python3),python3)
else
RUN := $(E3POT_ENV)/bin/python
endif

.PHONY: setup example test lammps

setup:
	@bash scripts/setup_env.sh

example: setup
	$(RUN) train.py --config configs/example.yaml --overwrite

lammps: setup
	$(RUN) -m e3pot.cli.main lammps build

test: setup lammps
	$(RUN) -m pytest -q --durations=20
