"""``e3pot export MODEL -o FILE``: a TorchScript archive that runs with torch alone."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="e3pot export", description=__doc__)
    p.add_argument("model", help="model file written by training (model.pt)")
    p.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    p.add_argument("--dtype", choices=["float32", "float64"], help="default: the model's own")
    args = p.parse_args(argv)

    from e3pot.model.export import export_model
    from e3pot.model.io import load_model

    try:
        model = load_model(args.model, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as exc:
        print(f"e3pot export: error: {exc}", file=sys.stderr)
        return 2
    export_model(model, args.output)
    print(f"exported {args.model} -> {args.output} (TorchScript, {str(model.dtype).replace('torch.', '')}, "
          f"species {model.atomic_numbers}, r_max {model.r_max} Å)")
    return 0
