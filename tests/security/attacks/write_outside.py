"""Write files outside the workspace: a world-writable host folder, the original sources the
workspace was copied from, the service's home, /etc and the workspace's parent."""

import json
import os
import sys

context = json.loads(sys.argv[2])
targets = [
    os.path.join(context["outside"], "pwned.txt"),
    os.path.join(context["origin"], "pwned.txt"),
    "/root/pwned.txt",
    "/etc/pwned.txt",
    os.path.join(os.path.dirname(os.getcwd()), "pwned.txt"),
]
for path in targets:
    try:
        with open(path, "w") as handle:
            handle.write(sys.argv[1])
        print(f"WROTE {path}")
    except OSError as exc:
        print(f"denied {path}: {exc.strerror}")
