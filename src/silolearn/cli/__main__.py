"""``python -m silolearn.cli``."""

from silolearn.cli import main

main()
