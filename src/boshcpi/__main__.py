"""`python -m boshcpi ...` is `boshcpi ...`."""

import sys

from boshcpi.cli import main

sys.exit(main())
