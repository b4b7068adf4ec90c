#!/usr/bin/env bash
# Set up what is missing for e3pot, and nothing more: a project-local virtual environment with
# torch (CPU build unless an NVIDIA GPU is visible), e3pot and its test tools.
#
#   bash scripts/setup_env.sh            # uses ./.venv (made if absent)
#   E3POT_ENV=active bash scripts/setup_env.sh   # uses the python of the active environment
#
# With E3POT_ENV=active the interpreter is the first of python, python3 on PATH (the Makefile runs the
# same one). An interpreter that its operating system manages (PEP 668: an EXTERNALLY-MANAGED file,
# outside a virtual environment) is refused before anything is installed, unless what e3pot needs
# is importable there already.
#
# Variables: E3POT_ENV (venv path, or "active"; default .venv), PYTHON (interpreter that makes the
# venv; default python3), TORCH_VERSION (default 2.13.0), TORCH_BUILD (cpu, cuda or auto; default
# auto), TORCH_CPU_INDEX (where pip finds CPU builds of torch).
# A second run finds the stamp file and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

ENV_DIR=${E3POT_ENV:-.venv}
BASE_PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_BUILD=${TORCH_BUILD:-auto}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

say() { echo "[setup] $*" >&2; }

if [ "$ENV_DIR" = active ]; then
  py=$(command -v python || command -v python3) || { say "no python on PATH"; exit 1; }
  stamp=""
else
  py=$ENV_DIR/bin/python
  stamp=$ENV_DIR/.e3pot-installed
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x "$py" ]; then
    say "$ENV_DIR is set up (remove it to start again)"
    exit 0  # pyproject.toml has not changed since the last install
  fi
fi

if [ ! -x "$py" ]; then
  command -v "$BASE_PYTHON" >/dev/null || { say "$BASE_PYTHON not found; install Python 3.10 or newer"; exit 1; }
  "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { say "$BASE_PYTHON is $("$BASE_PYTHON" --version 2>&1); e3pot needs Python 3.10 or newer (PYTHON=...)"; exit 1; }
  say "making the virtual environment $ENV_DIR"
  "$BASE_PYTHON" -m venv "$ENV_DIR"
  "$py" -m pip install -q --upgrade pip
fi
say "using $py ($("$py" --version 2>&1))"

need_torch=""
"$py" -c 'import torch' 2>/dev/null || need_torch=1
need_e3pot=1
[ -z "$stamp" ] && "$py" -c 'import e3pot, pytest' 2>/dev/null && need_e3pot=""

# PEP 668: pip refuses to install into an interpreter that the operating system manages
if [ -n "$need_torch$need_e3pot" ] && "$py" - <<'PY'
import os, sys, sysconfig
managed = os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PY
then
  say "$py is a Python that the operating system manages (PEP 668: externally managed), outside any"
  say "virtual environment, and pip will not install e3pot into it. Activate a virtual environment"
  say "(python3 -m venv ~/venvs/e3pot && . ~/venvs/e3pot/bin/activate) and run again, or leave"
  say "E3POT_ENV unset to use the default ./.venv (make test)."
  exit 1
fi

# torch first: anything that depends on it would otherwise pull the default build.
if [ -z "$need_torch" ]; then
  say "torch $("$py" -c 'import torch; print(torch.__version__)') is already installed: kept"
else
  if [ "$TORCH_BUILD" = auto ]; then
    if command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | grep -q GPU; then
      TORCH_BUILD=cuda
    else
      TORCH_BUILD=cpu
    fi
  fi
  if [ "$TORCH_BUILD" = cuda ]; then
    say "NVIDIA GPU visible: installing torch==$TORCH_VERSION, the default (CUDA) build"
    "$py" -m pip install -q "torch==$TORCH_VERSION"
  else
    say "no NVIDIA GPU visible: installing torch==$TORCH_VERSION, the CPU build"
    # A CPU wheel already in pip's find-links (a local wheelhouse) is taken without a download;
    # otherwise the CPU-only index, which spares the gigabytes of CUDA packages.
    if "$py" -m pip install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
      "$py" -m pip install -q "torch==$TORCH_VERSION"  # its dependencies, from the usual index
    else
      "$py" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX"
    fi
  fi
fi

if [ -z "$need_e3pot" ]; then
  say "e3pot and pytest are already importable: nothing to install"
else
  say "installing e3pot (editable) with its test extra"
  "$py" -m pip install -q -e ".[test]"
fi
[ -n "$stamp" ] && touch "$stamp"
say "ready"
