"""`python -m torchdoctor.sandbox.probes SCRIPT [ARGS...] --steps N --out evidence.json`."""

import sys

from torchdoctor.sandbox.probes.cli import main

sys.exit(main(sys.argv[1:]))
