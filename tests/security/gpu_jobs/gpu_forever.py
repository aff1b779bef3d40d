"""Inside the sandbox: keep the GPU busy forever; only the wall-clock limit can stop it."""

import torch

a = torch.randn(4096, 4096, device="cuda")
print("spinning", flush=True)
while True:
    a = torch.tanh(a @ a)
