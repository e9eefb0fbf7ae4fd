"""``python -m devhost --settings local.settings.json --port 7071``: serve ``function_app`` until Ctrl-C."""

import sys

from devhost.host import main

sys.exit(main())
