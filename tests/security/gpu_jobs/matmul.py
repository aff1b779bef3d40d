"""Inside the sandbox: see the GPU, run a CUDA matmul, report throughput and who we are."""

import json
import os
import time

import torch

assert torch.cuda.is_available(), "CUDA is not visible inside the sandbox"
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
steps = 20
start = time.perf_counter()
for _ in range(steps):
    c = a @ b
torch.cuda.synchronize()
seconds = time.perf_counter() - start
check = (a[:64].float() @ b[:, :64].float() - c[:64, :64].float()).abs().max().item()
print(
    json.dumps(
        {
            "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "tflops": round(2 * n**3 * steps / seconds / 1e12, 1),
            "max_abs_error_vs_fp32": round(check, 3),
            "uid": os.getuid(),
            "visible_devices": [p for p in os.listdir("/dev") if p.startswith("nvidia")],
        }
    )
)
