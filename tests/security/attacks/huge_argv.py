"""Exec a program with an argument list far beyond the kernel's limit, then with many large
environment variables, hoping to crash something other than itself."""

import os
import sys

args = [sys.executable, "-c", "pass", *(["A" * 100_000] * 400)]
try:
    os.execv(sys.executable, args)
except OSError as exc:
    print(f"exec refused: {exc.strerror}")
    sys.exit(1)
