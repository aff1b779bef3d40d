"""Fork bomb: every process forks forever. The process limit must stop it and the sweep must
leave nothing behind."""

import os
import time

while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
