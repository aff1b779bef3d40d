"""Inside the sandbox: initialise CUDA (no address-space limit then), then hoard host memory;
the resident-memory watch must stop it."""

import torch

torch.zeros(1, device="cuda")
print("cuda ready", flush=True)
hoard = []
while True:
    hoard.append(torch.ones(64 * 2**20, dtype=torch.uint8))
