"""Print 200 MB to stdout as fast as possible."""

import sys

line = b"y" * 1023 + b"\n"
block = line * 1024
for _ in range(200):
    sys.stdout.buffer.write(block)
sys.stdout.buffer.flush()
