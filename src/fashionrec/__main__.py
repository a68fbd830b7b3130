"""`python -m fashionrec ...`, the same as the `fashionrec` command."""

import sys

from fashionrec.cli.main import main

sys.exit(main())
