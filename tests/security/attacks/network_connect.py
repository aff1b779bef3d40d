"""Connect to a TCP server the test runs on the host's 127.0.0.1 and send it a secret."""

import json
import socket
import sys

context = json.loads(sys.argv[2])
try:
    with socket.create_connection(("127.0.0.1", context["port"]), timeout=2) as conn:
        conn.sendall(b"exfiltrated " + sys.argv[1].encode())
    print("CONNECTED")
    sys.exit(3)
except OSError as exc:
    print(f"blocked: {exc}")
