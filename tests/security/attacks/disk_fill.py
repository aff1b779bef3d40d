"""Disk fill: write 8 MiB files, under the file-size limit each, to the workspace and /tmp,
until the disk quota or the tmpfs size stops it."""

import os
import sys

chunk = b"\0" * (8 * 2**20)
for index in range(100_000):
    for folder in (".", "/tmp"):
        try:
            with open(os.path.join(folder, f"fill-{index}.bin"), "wb") as handle:
                handle.write(chunk)
        except OSError as exc:
            print(f"write stopped in {folder}: {exc}", file=sys.stderr)
            sys.exit(1)
