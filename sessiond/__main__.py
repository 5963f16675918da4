"""``python -m sessiond``."""

import sys

from .cli import main

sys.exit(main())
