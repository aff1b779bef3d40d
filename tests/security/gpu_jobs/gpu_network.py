"""Inside the sandbox, with the GPU: try to reach the host's 127.0.0.1."""

import socket
import sys

import torch

torch.zeros(1, device="cuda")
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
    print("CONNECTED")
    sys.exit(3)
except OSError as exc:
    print(f"blocked: {exc}")
