"""`python -m torchdoctor.sandbox.probes SCRIPT [ARGS...] --steps N --out evidence.json`."""

import gc
import sys

# Importing torch builds about 250,000 objects that live as long as the process, and the
# collector would walk them again at every full collection: the rest of torch's imports (the
# optimizer brings in torch._dynamo) and the run itself paid for it, about 30% of the CPU time of
# a small script's run (3.6 -> 2.5 s). Collection is paused while the harness imports torch, and
# what the imports built is frozen out of it (`gc.freeze`, as a server does before forking): the
# script runs with the collector on as usual, and its collections skip torch's own objects. The
# seeded re-runs of the determinism probe and torchrun's ranks start here too.
gc.disable()
from torchdoctor.sandbox.probes.cli import main  # noqa: E402

gc.freeze()
gc.enable()
sys.exit(main(sys.argv[1:]))
