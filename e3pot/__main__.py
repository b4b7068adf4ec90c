import sys

from e3pot.cli.main import main

sys.exit(main())
