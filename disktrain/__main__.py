"""``python -m disktrain``: the command line (see :mod:`disktrain.cli`)."""

from disktrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
