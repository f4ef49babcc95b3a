"""`python -m convopt` is the same as the `convopt` console script."""

import sys

from convopt.cli import main

sys.exit(main())
