"""``make demo`` / ``python -m demo``: the real function app on the local host, end to end on the emulators.

Never deployed (.funcignore). The scenario and its checks are in ``demo.scenario``.
"""

from demo.scenario import main

__all__ = ["main"]
