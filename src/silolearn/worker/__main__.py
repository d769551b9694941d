"""``python -m silolearn.worker --fd N``: the worker process."""

from silolearn.worker.main import main

if __name__ == "__main__":
    main()
