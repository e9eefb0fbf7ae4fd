"""``python -m opscli``."""

from opscli.cli import main

main()
