"""``e3pot export MODEL -o FILE``: a TorchScript archive that runs with torch alone, or with ``--format aoti``
an AOTInductor package (.pt2), compiled once here, that loads without compiling.

The engines tell the formats apart by the name: an AOTInductor package is a ``.pt2`` file, and a TorchScript
archive is not. A shallow ensemble (a model with several read-out heads) is exported as its heads' mean."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from e3pot.files import OVERWRITE_HELP

FORMATS = {"torchscript": "TorchScript", "aoti": "AOTInductor"}


def output_format(fmt: Optional[str], output: str) -> str:
    """The format asked for, else the one the output's name says: ``aoti`` for a ``.pt2`` file, else
    ``torchscript``."""
    if fmt is not None:
        return fmt
    return "aoti" if output.lower().endswith(".pt2") else "torchscript"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="e3pot export", description=__doc__,
        epilog="The output is written to a temporary file next to it and moved into place when complete; "
               "it is never the model file itself. An AOTInductor export compiles energy, forces and stress "
               "(a minute or more on a CPU) and runs on the device kind it was compiled for, with the torch "
               "version that compiled it.")
    p.add_argument("model", help="model file written by training (model.pt)")
    p.add_argument("-o", "--output", required=True,
                   help="file to write: a TorchScript archive, or an AOTInductor package (a name ending in .pt2)")
    p.add_argument("--format", choices=list(FORMATS),
                   help="torchscript, or aoti: an AOTInductor package (default: aoti when -o ends in .pt2, else "
                        "torchscript)")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's own")
    p.add_argument("--device", default="cpu",
                   help="--format aoti: the device the package is compiled for and runs on, 'cpu' (default) or "
                        "'cuda' / 'cuda:N'")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = p.parse_args(argv)
    fmt = output_format(args.format, args.output)

    from e3pot.files import check_output
    from e3pot.model.io import load_model

    try:
        check_output(args.output, "-o", inputs=[args.model], overwrite=args.overwrite)
        if fmt == "aoti":
            if not args.output.lower().endswith(".pt2"):
                raise ValueError(f"-o {args.output}: an AOTInductor package is a .pt2 file (LAMMPS's pair_style e3pot "
                                 "tells the formats apart by the name); give a name ending in .pt2")
            from e3pot.model.aoti import export_aoti
            from e3pot.model.runtime import check_device

            device = check_device(args.device)
            model = load_model(args.model, device=device, dtype=args.dtype)
            export_aoti(model, args.output)
        else:
            if args.output.lower().endswith(".pt2"):
                raise ValueError(f"-o {args.output}: a .pt2 name is an AOTInductor package's (LAMMPS's pair_style "
                                 "e3pot and the other engines tell the formats apart by the name), not a TorchScript "
                                 "archive's; give another name (model.ts, say) or --format aoti")
            if args.device != "cpu":
                raise ValueError(f"--device {args.device}: only an AOTInductor export (--format aoti) is compiled for "
                                 "a device; a TorchScript export runs on any device")
            model = load_model(args.model, dtype=args.dtype)
            from e3pot.model.export import export_model

            export_model(model, args.output)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"e3pot export: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"exported {args.model} -> {args.output} ({FORMATS[fmt]}, {str(model.dtype).replace('torch.', '')}, "
          f"species {model.atomic_numbers}, r_max {model.r_max} Å)")
    heads = getattr(model, "num_heads", 1)
    if heads > 1:
        print(f"e3pot export: note: {args.model} is a shallow ensemble ({heads} read-out heads); the export keeps the "
              "heads' mean energy, forces and stress only, not their spread (the uncertainty needs the model file, "
              "in Python: e3pot.E3PotCalculator, e3pot predict --uncertainty)", file=sys.stderr)
    return 0


def _one_line(exc: Exception) -> str:
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
