"""``e3pot preprocess INPUT [INPUT ...] -o STORE``: structures and labels into an on-disk store.

Reads the inputs one frame at a time (constant memory), converts units with the same options as
training, checks every frame, and writes a store (see :mod:`e3pot.data.store`) that training reads
lazily wherever it accepts a file (``data.train_file``, ``data.val_file``).

The store is written in a new folder next to it (a name no other file has) and moved into place when
complete, so an interrupted run leaves no half-written store. The store is never one of the inputs and
holds none of them; --overwrite replaces only a folder that is an e3pot store (its meta.json says so),
and the old store goes only once the new one is complete.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from e3pot.files import OVERWRITE_HELP


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e3pot preprocess", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.strip().split("\n\n")[-1])
    p.add_argument("inputs", nargs="+", help="ASE-readable structure files or rMD17-style npz")
    p.add_argument("-o", "--output", required=True, help="the store to write (a folder)")
    p.add_argument("--r-max", type=float, default=5.0,
                   help="cutoff (Å) at which neighbours are counted for the statistics; use the model's r_max "
                        "(default 5.0; another cutoff at training time counts them on a sample)")
    p.add_argument("--energy-key"), p.add_argument("--forces-key"), p.add_argument("--stress-key")
    p.add_argument("--energy-unit", default="eV"), p.add_argument("--length-unit", default="Å")
    p.add_argument("--stress-unit", default=None)
    p.add_argument("--overwrite", action="store_true",
                   help=OVERWRITE_HELP + "; only an e3pot store is replaced, once the new one is complete")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from e3pot.data.io import DataError, LabelSpec
    from e3pot.data.store import FrameStore, write_store
    from e3pot.data.units import energy_factor, length_factor

    try:
        if not args.r_max > 0:
            raise ValueError(f"--r-max must be positive, got {args.r_max}")
        energy_factor(args.energy_unit), length_factor(args.length_unit)  # unknown units fail before any work
        labels = LabelSpec(args.energy_key, args.forces_key, args.stress_key, args.energy_unit,
                           args.length_unit, args.stress_unit)
        start = time.perf_counter()
        path = write_store(args.inputs, args.output, labels, args.r_max, args.overwrite, not args.no_progress)
    except (DataError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"e3pot preprocess: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the disk full, a folder without permission, ...
        print(f"e3pot preprocess: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}",
              file=sys.stderr)
        return 2
    store = FrameStore(path)
    from ase.data import chemical_symbols

    print(f"wrote {len(store)} frames ({store.meta['n_atoms']} atoms; elements "
          f"{' '.join(chemical_symbols[z] for z in store.elements)}) to {path} in {time.perf_counter() - start:.1f} s")
    return 0
