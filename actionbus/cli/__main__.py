"""``python -m actionbus.cli``."""

from actionbus.cli import main

main()
