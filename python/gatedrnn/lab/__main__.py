"""python -m gatedrnn.lab: see gatedrnn.lab's docstring."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
