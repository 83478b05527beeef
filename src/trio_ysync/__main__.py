"""``python -m trio_ysync``: the same as the ``trio-ysync`` command."""

import sys

from .cli import main

sys.exit(main())
