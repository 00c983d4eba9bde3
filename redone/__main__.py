"""`python -m redone ...` and `accelerate launch -m redone ...` run the CLI."""

import sys

from redone.cli import main

sys.exit(main())
