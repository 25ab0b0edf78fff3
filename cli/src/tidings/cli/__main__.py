"""`python -m tidings.cli …` runs the `tidings` command."""

import sys

from tidings.cli.main import main

sys.exit(main())
