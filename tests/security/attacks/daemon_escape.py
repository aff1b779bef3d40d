"""Daemonise: double fork and setsid, then the grandchild sleeps forever while the job itself
exits successfully at once. Nothing of the job may outlive it."""

import os
import sys
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        time.sleep(10**6)
    os._exit(0)
print("parent leaving", sys.argv[1])
