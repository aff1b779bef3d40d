"""Where a training script's GPU time goes: its top kernels over a few steady steps.

Runs the script unchanged in this process under torch.profiler; every optimizer step (a global
post-step hook, so any optimizer counts) advances the profiler's schedule: `--wait` steps
skipped (compilation, warm-up), then `--active` steps recorded. Prints the kernels by total
GPU time, each one's share of the recorded GPU time, and the GPU time per step.

    python benchmarks/kernel_profile.py --wait 8 benchmarks/gpt2_naive_train.py --steps 20

(the profiler's options before the script, the script's own after it)
"""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Any

import torch
from torch._C._autograd import DeviceType
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script")
    parser.add_argument("--wait", type=int, default=8, help="optimizer steps left out first")
    parser.add_argument("--active", type=int, default=3, help="optimizer steps recorded")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    plan = schedule(wait=args.wait, warmup=1, active=args.active, repeat=1)
    with profile(activities=activities, schedule=plan) as prof:
        handle = register_optimizer_step_post_hook(lambda *_: prof.step())
        sys.argv = [args.script, *[a for a in args.script_args if a != "--"]]
        try:
            runpy.run_path(args.script, run_name="__main__")
        finally:
            handle.remove()
    events = prof.key_averages()
    cuda = torch.cuda.is_available()

    def gpu_us(event: Any) -> float:
        if not cuda:
            return float(event.self_cpu_time_total)
        # torch >= 2.4 names it device time; older releases cuda time
        new = getattr(event, "self_device_time_total", None)
        return float(new if new is not None else event.self_cuda_time_total)

    # record_function ranges (ProfilerStep#N, Optimizer.step#...) carry GPU time too: not kernels
    annotations = {e.name for e in prof.events() if e.is_user_annotation}
    kernels = sorted(
        (
            e
            for e in events
            if gpu_us(e) > 0
            and e.key not in annotations
            and not e.key.startswith("ProfilerStep")
            and (e.device_type == DeviceType.CUDA or not cuda)
        ),
        key=gpu_us,
        reverse=True,
    )
    total = sum(gpu_us(e) for e in kernels) or 1.0
    where = "GPU" if cuda else "CPU (no GPU)"
    print(f"recorded {args.active} steps: {total / 1e3 / args.active:.2f} ms {where} time/step")
    for event in kernels[: args.top]:
        share = gpu_us(event) / total
        name = event.key if len(event.key) <= 90 else event.key[:87] + "..."
        print(f"  {share:6.1%} {gpu_us(event) / 1e3 / args.active:8.3f} ms/step  {name}")


if __name__ == "__main__":
    main()
