"""``e3pot audit MODEL [STRUCTURES ...]``: check a model's symmetry, derivatives, smoothness at the
cutoff and energy conservation, and print each measured error against its tolerance.

Exit status: 0 when every check passes, 1 when one fails, 2 on bad input (a missing or unreadable
file, an element the model does not know).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e3pot audit", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model file (model.pt) or TorchScript export")
    p.add_argument("structures", nargs="*",
                   help="ASE-readable structure files, all frames (default: built-in molecules and a periodic "
                        "cell made of the model's elements)")
    p.add_argument("--max-structures", type=int, default=4, help="audit at most this many structures (default 4)")
    p.add_argument("--dtypes", nargs="+", choices=["float32", "float64"], default=["float32", "float64"],
                   help="dtypes of the symmetry checks (default both); derivatives, cutoff and MD run in float64")
    p.add_argument("--nve-steps", type=int, default=200, help="steps of the NVE run, 0 to skip it (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random transformations and velocities")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: torch's own, one per core); 1 is as fast for small molecules and "
                        "much faster on a busy machine")
    p.add_argument("--json", action="store_true", help="print the checks as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--radial", default="exact", choices=["exact", "table"],
                   help="audit the model with its radial networks as cubic Hermite tables (e3 model files)")
    return p


def _read(paths: List[str], limit: int):
    """(name, atoms) of the first ``limit`` frames of ``paths``; read lazily, so a long trajectory costs nothing."""
    from e3pot.data.io import iter_atoms

    for path in paths:
        if not limit:
            return
        for k, atoms in enumerate(iter_atoms(path)):
            yield f"{path}, frame {k}", atoms
            limit -= 1
            if not limit:
                return


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from e3pot.allocator import tune_allocator
    from e3pot.audit import audit
    from e3pot.data.io import DataError
    from e3pot.model.runtime import NonFiniteError

    tune_allocator()

    def progress(line: str) -> None:
        print(f"e3pot audit: {line}", file=sys.stderr, flush=True)

    try:
        if not 0 <= args.seed <= 2**32 - 1:
            raise ValueError(f"--seed must be between 0 and {2**32 - 1}, got {args.seed}")
        if args.max_structures < 1:
            raise ValueError(f"--max-structures must be at least 1, got {args.max_structures}")
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be at least 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        structures = list(_read(args.structures, args.max_structures)) if args.structures else None
        if structures == []:
            raise DataError(f"{', '.join(args.structures)}: no structures")
        model = args.model
        if args.radial == "table":
            from e3pot.model.runtime import load_any
            from e3pot.model.tables import use_radial

            model = use_radial(load_any(args.model, dtype="float64"), "table")
        report = audit(model, structures, dtypes=args.dtypes, nve_steps=args.nve_steps, seed=args.seed,
                       max_structures=args.max_structures, progress=None if args.quiet else progress)
    except NonFiniteError as exc:  # the model, not the input, is at fault
        print(f"e3pot audit: FAIL: {exc}", file=sys.stderr)
        return 1
    except (DataError, FileNotFoundError, ValueError, MemoryError) as exc:
        print(f"e3pot audit: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0 if report.passed else 1
