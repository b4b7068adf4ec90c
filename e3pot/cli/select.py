"""``e3pot select POOL [POOL ...] --model a.pt,b.pt,c.pt -n 25 -o picks.extxyz``: the structures to label next.

Scores every structure of the pool (ASE-readable files or rMD17-style npz: an MD trajectory, a file of
candidates) with a committee or a shallow ensemble, and writes the ``-n`` most uncertain, kept apart by
farthest-point sampling in the model's invariant features (see :mod:`e3pot.select`), to ``-o``: extended XYZ
(or an ASE trajectory), positions and cell as in the pool, without the pool's calculator results, and the reason
for each pick in ``info`` (``e3pot_select_reason``, ``e3pot_select_score``, ``e3pot_select_rank``,
``e3pot_select_pool_index``, ``e3pot_select_source``): ready for a DFT code to label.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

OUTPUT_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}


def _parser() -> argparse.ArgumentParser:
    from e3pot.files import OVERWRITE_HELP

    p = argparse.ArgumentParser(prog="e3pot select", description=__doc__.split("\n\n")[0])
    p.add_argument("pool", nargs="+", help="ASE-readable structure files or rMD17-style npz to pick from")
    p.add_argument("-m", "--model", required=True,
                   help="a committee, comma-separated (a.pt,b.pt,c.pt: at least one a model file, whose features keep "
                        "the picks apart), or a shallow ensemble (a model trained with model.heads > 1)")
    p.add_argument("-n", type=int, required=True, help="how many structures to pick")
    p.add_argument("-o", "--output", required=True, help="output file: .extxyz/.xyz or .traj")
    p.add_argument("--candidates", type=int,
                   help="size of the shortlist of the most uncertain structures that the picks are spread over "
                        "(default 4 n, at most half the eligible structures, at least n; n: the n most uncertain "
                        "distinct structures, no diversity rule)")
    p.add_argument("--max-score", type=float, metavar="LEVEL",
                   help="upper trust level: structures more uncertain than this (in the unit of --score) are left out "
                        "as likely unphysical (default: none)")
    p.add_argument("--score", default="forces", choices=["forces", "energy"],
                   help="what ranks the structures: the largest force uncertainty of an atom (default, eV/Å) or the "
                        "energy uncertainty per atom (eV/atom)")
    p.add_argument("--batch-size", type=int, default=16, help="structures per batch (default 16)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args) -> int:
    import os

    import ase.io

    from e3pot.cli.predict import model_paths
    from e3pot.data.io import DataError, iter_labelled
    from e3pot.files import atomic_output, check_output
    from e3pot.model.ensemble import IdenticalMembersWarning
    from e3pot.select import select_frames

    if args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_score is not None and not args.max_score > 0:
        raise ValueError(f"--max-score (the upper trust level) must be positive, got {args.max_score}")
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"-o {args.output}: use .extxyz or .xyz (extended XYZ) or .traj (ASE trajectory)")
    paths = model_paths(args.model, "--model")
    check_output(args.output, "-o", inputs=[*paths, *args.pool], overwrite=args.overwrite)
    for path in args.pool:
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file")
    pool, sources = [], []
    for path in args.pool:
        for source, atoms, _ in iter_labelled(path):
            pool.append(atoms)
            sources.append(source)
    if not pool:
        raise DataError(f"{', '.join(args.pool)}: no structures")
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IdenticalMembersWarning)
            picks = select_frames(paths if len(paths) > 1 else paths[0], pool, args.n, candidates=args.candidates,
                                  score=args.score, batch_size=args.batch_size, device=args.device,
                                  progress=not args.no_progress, max_score=args.max_score)
    finally:  # shown also when the selection fails; ours as the command's warnings, others as Python shows them
        for w in caught:
            if issubclass(w.category, IdenticalMembersWarning):
                print(f"e3pot select: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for atoms in picks:
        atoms.info["e3pot_select_source"] = sources[atoms.info["e3pot_select_pool_index"]]
    with atomic_output(args.output) as tmp:
        ase.io.write(tmp, picks, format=OUTPUT_FORMATS[ext])
    print(f"picked {len(picks)} of {len(pool)} structures; wrote them to {args.output}")
    for atoms in picks[:10]:
        print(f"  {atoms.info['e3pot_select_source']}: {atoms.info['e3pot_select_reason']}")
    if len(picks) > 10:
        print(f"  ... and {len(picks) - 10} more (the reasons are in each structure's info)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from e3pot.data.io import DataError
    from e3pot.files import OutputError

    try:
        return run(args)
    except (OutputError, DataError, OSError, ValueError, MemoryError) as exc:
        print(f"e3pot select: error: {exc}", file=sys.stderr)
        return 2
