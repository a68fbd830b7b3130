"""`python -m fashionrec.serving --data DIR [--workers N]` (see fashionrec.serving.server)."""

import sys

from fashionrec.serving.server import main

sys.exit(main())
