"""``python -m experiments ...``: the command line of :mod:`experiments.cli`."""

import sys

from experiments.cli import main

if __name__ == "__main__":
  sys.exit(main())
