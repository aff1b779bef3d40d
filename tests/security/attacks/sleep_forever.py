"""Sleep forever without using CPU: only the wall-clock limit can end it."""

import time

time.sleep(10**6)
