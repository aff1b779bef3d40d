"""What the audit's shared compiler cache saves: the same `torch.compile` job run twice through
the local sandbox, each pair with a fresh cache and without one (wall seconds of each run and
the compile caches' hits, as torch counts them). On a GPU pass `--device cuda` for a Triton compile.

Run: `PYTHONPATH=. python benchmarks/compile_cache.py [--device cpu|cuda] [--width 256]`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torchdoctor.sandbox.config import get_sandbox
from torchdoctor.sandbox.models import Job, Limits
from torchdoctor.sandbox.shared_cache import cache_environment, compile_cache

SCRIPT = """
import sys
import torch
from torch._dynamo.utils import counters



class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.up, self.down = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


device, width = sys.argv[1], int(sys.argv[2])
model = Block(width).to(device)
model.compile()
model(torch.randn(64, width, device=device)).sum().backward()
hits = {k: v for group in counters.values() for k, v in group.items() if k.endswith("cache_hit")}
print("cache hits", hits or 0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    workspace = Path(tempfile.mkdtemp(prefix="compile-cache-bench-"))
    (workspace / "compiled.py").write_text(SCRIPT)
    sandbox = get_sandbox("local")
    limits = Limits(wall_s=600, cpu_s=3600, memory_mb=16384)
    argv = ["python", "compiled.py", args.device, str(args.width)]
    for shared in (False, True):
        with compile_cache() as cache:
            folder = cache if shared else None
            env = cache_environment(folder) if folder is not None else {}
            for run in (1, 2):
                job = Job(
                    workspace=workspace,
                    command=argv,
                    cache=folder,
                    env=env,
                    limits=limits,
                    gpu=args.device == "cuda",
                )
                result = sandbox.run(job)
                label = "shared cache" if shared else "no cache    "
                said = result.stdout.strip() or f"{result.outcome}: {result.stderr[-300:]}"
                print(f"{label} run {run}: {result.usage.wall_s:6.1f} s  {said}", flush=True)


if __name__ == "__main__":
    main()
