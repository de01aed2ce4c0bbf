"""``python -m replaykit``: the same command line as the ``replaykit`` console script."""

from __future__ import annotations

import sys

from replaykit.cli import main

if __name__ == "__main__":
    sys.exit(main())
