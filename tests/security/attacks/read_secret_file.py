"""Read a secret file planted outside the workspace (world-readable), the service's home and
the host's password hashes."""

import json
import os
import sys

context = json.loads(sys.argv[2])
targets = [context["secret_file"], "/etc/shadow"]
try:
    targets += [os.path.join("/root", name) for name in os.listdir("/root")]
except OSError as exc:
    print(f"denied /root: {exc.strerror}")
for path in targets:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            print(f"READ {path}: {handle.read(4096)}")
    except OSError as exc:
        print(f"denied {path}: {exc.strerror}")
