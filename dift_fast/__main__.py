"""``python -m dift_fast``: the ``dift-fast`` command line (for environments without the console script on PATH)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
