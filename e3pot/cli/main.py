"""The ``e3pot`` command: ``e3pot train|predict|select|preprocess|export|export-checkpoint|audit|lammps ...`` (also ``python -m e3pot``)."""
from __future__ import annotations

import sys
from typing import List, Optional

USAGE = """usage: e3pot COMMAND [ARGS]

commands:
  train     train a potential (same as: python train.py --config configs/X.yaml)
  predict   energies and forces for structures in ASE-readable files (--uncertainty: and their spread)
  select    pick the structures to label next: the most uncertain, kept apart
  preprocess  structures and labels into an on-disk store for training on large datasets
  export    write a TorchScript model for deployment
  export-checkpoint  write a model file from a training checkpoint (last.ckpt, best-*.ckpt)
  audit     check a model's symmetry, forces, smoothness at the cutoff and energy conservation
  lammps    build the LAMMPS plugin (pair_style e3pot), write input decks

Run 'e3pot COMMAND --help' for the options of a command."""


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from e3pot.train.cli import run as train_run

        return train_run(rest, prog="e3pot train")
    if command == "predict":
        from e3pot.cli.predict import main as predict_main

        return predict_main(rest)
    if command == "select":
        from e3pot.cli.select import main as select_main

        return select_main(rest)
    if command == "preprocess":
        from e3pot.cli.preprocess import main as preprocess_main

        return preprocess_main(rest)
    if command == "export":
        from e3pot.cli.export import main as export_main

        return export_main(rest)
    if command == "export-checkpoint":
        from e3pot.cli.export_checkpoint import main as export_checkpoint_main

        return export_checkpoint_main(rest)
    if command == "audit":
        from e3pot.cli.audit import main as audit_main

        return audit_main(rest)
    if command == "lammps":
        from e3pot.cli.lammps import main as lammps_main

        return lammps_main(rest)
    print(f"e3pot: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
