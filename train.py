"""Train an e3pot potential: ``python train.py --config configs/example.yaml``."""
from e3pot.train.cli import main

if __name__ == "__main__":
    main()
