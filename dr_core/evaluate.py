"""``python -m dr_core.evaluate``, the reference guide's command: see :mod:`dr_core.cli.evaluate`."""
import sys

from dr_core.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
