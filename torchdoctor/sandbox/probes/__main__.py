"""`python -m sandbox.probes SCRIPT [ARGS...] --steps N --out evidence.json`."""

import sys

from sandbox.probes.cli import main

sys.exit(main(sys.argv[1:]))
