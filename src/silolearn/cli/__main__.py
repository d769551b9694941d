"""``python -m silolearn.cli``."""

from silolearn.cli import main

if __name__ == "__main__":
    main()
