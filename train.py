"""Train an e3pot potential: ``python train.py --config configs/example.yaml``."""
import sys

from e3pot.train.cli import run

if __name__ == "__main__":
    sys.exit(run())
