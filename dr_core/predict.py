"""``python -m dr_core.predict``, the reference guide's command: see :mod:`dr_core.cli.predict`."""
import sys

from dr_core.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
