"""``python -m demo [--keep-running]``: run the scenario of ``demo.scenario``."""

import sys

from demo.scenario import main

sys.exit(main())
