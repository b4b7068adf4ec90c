"""``e3pot export MODEL -o FILE``: a TorchScript archive that runs with torch alone."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from e3pot.files import OVERWRITE_HELP


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="e3pot export", description=__doc__,
        epilog="The output is written to a temporary file next to it and moved into place when complete; "
               "it is never the model file itself.")
    p.add_argument("model", help="model file written by training (model.pt)")
    p.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's own")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    args = p.parse_args(argv)

    from e3pot.files import check_output
    from e3pot.model.export import export_model
    from e3pot.model.io import load_model

    try:
        check_output(args.output, "-o", inputs=[args.model], overwrite=args.overwrite)
        model = load_model(args.model, dtype=args.dtype)
        export_model(model, args.output)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"e3pot export: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(f"exported {args.model} -> {args.output} (TorchScript, {str(model.dtype).replace('torch.', '')}, "
          f"species {model.atomic_numbers}, r_max {model.r_max} Å)")
    return 0


def _one_line(exc: Exception) -> str:
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
