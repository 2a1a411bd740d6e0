"""``python -m lorafam`` (also what torchrun launches)."""

import sys

from lorafam.cli import main

sys.exit(main())
