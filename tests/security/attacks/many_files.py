"""Inode exhaustion: create empty files without end; they use no bytes, so only a limit on
the number of entries stops them."""

import os

os.makedirs("many", exist_ok=True)
index = 0
while True:
    with open(os.path.join("many", f"{index}"), "w"):
        pass
    index += 1
