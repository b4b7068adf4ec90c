"""Results files of the benchmark scripts: the numbers, and where they came from.

Every benchmark writes ``benchmarks/results/<name>.json`` (machine-readable, with the run's
provenance) and ``benchmarks/results/<name>.md`` (the printed table under a provenance header),
which ``docs/`` links. A number quoted in the docs names the file it came from; re-running the
script replaces the file.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any, Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, "benchmarks", "results")


def provenance(command: Optional[str] = None) -> Dict[str, Any]:
    """Date (UTC), git commit (with a mark when the work tree differs from it), machine and versions."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    versions = {}
    for name in ("torch", "e3nn", "ase", "numpy"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "command": command or " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
                    "system": platform.system()},
        "versions": versions,
    }


def header(info: Dict[str, Any]) -> str:
    m = info["machine"]
    where = f"{m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (f"Measured {info['date']} at commit {info['commit']} on {where} ({versions}).\n"
            f"Command: `{info['command']}`\n")


def _clean(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays as numbers and lists, NaN and infinity as null."""
    import math

    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def split_out(path: str):
    """(name, folder) of an ``--out`` JSON path: ``benchmarks/results/speed.json`` -> ("speed", "benchmarks/results")."""
    return os.path.splitext(os.path.basename(path))[0], os.path.dirname(os.path.abspath(path))


def write_out(out: Optional[str], results: Dict[str, Any], table: str) -> None:
    """Print ``table`` and, unless ``out`` is empty, write ``results`` (a dict, merged next to the provenance) to
    the ``--out`` JSON path and ``table`` beside it as markdown."""
    print(table)
    if out:
        name, folder = split_out(out)
        write(name, results, table, folder=folder, merge=True)


def write(name: str, results: Any, table: str = "", folder: Optional[str] = None,
          command: Optional[str] = None, merge: bool = False) -> str:
    """Write ``<folder>/<name>.json`` (results with provenance) and, given a table, ``<name>.md``.

    The JSON holds ``{"provenance": ..., "results": results}``, or with ``merge`` (a dict of
    results) the results' own keys next to ``"provenance"``. Returns the JSON path."""
    folder = folder or FOLDER
    os.makedirs(folder, exist_ok=True)
    info = provenance(command)
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w", encoding="utf-8") as fh:
        payload = {"provenance": info, **_clean(results)} if merge else {"provenance": info, "results": _clean(results)}
        json.dump(payload, fh, indent=1, ensure_ascii=False, allow_nan=False)
        fh.write("\n")
    if table:
        with open(os.path.join(folder, f"{name}.md"), "w", encoding="utf-8") as fh:
            fh.write(f"# {name}\n\n{header(info)}\n{table.rstrip()}\n")
    return path
