"""Assemble the evidence document from a finished session and write it atomically."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from typing import Any

import torch

from torchdoctor.sandbox.probes import SCHEMA_VERSION, TOOL_NAME
from torchdoctor.sandbox.probes import datasets as standins
from torchdoctor.sandbox.probes.config import ProbeConfig
from torchdoctor.sandbox.probes.frames import Location, UserFiles
from torchdoctor.sandbox.probes.locate import attribute_location, class_location, forward_location
from torchdoctor.sandbox.probes.session import Session
from torchdoctor.sandbox.probes.tensors import cuda_in_use, describe

PHASE_ORDER = {"input": 0, "forward": 1, "loss": 2, "backward": 3}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _loc(location: Location | None) -> dict[str, Any]:
    return (
        {"file": location.file, "line": location.line} if location else {"file": None, "line": None}
    )


def mode_of(session: Session) -> str:
    if session.trains or session.main_optimizer is not None:
        return "train"
    return "inference" if session.roots else "none"


def step_unit(session: Session) -> str:
    if mode_of(session) != "train":
        return "forward passes"
    return "optimizer steps" if session.optimizer_built else "training steps"


def _nonfinite(session: Session, user_files: UserFiles) -> dict[str, Any] | None:
    candidates: list[dict[str, Any]] = []
    forward = session.forward.first_nonfinite
    if forward is not None:
        module = next(
            (m for k, m in session.roots.items() if forward["module"].startswith(type(m).__name__)),
            None,
        )
        located: Location | None = None
        if module is not None and forward["phase"] == "forward":
            path = forward["module"].split(".", 1)[1] if "." in forward["module"] else ""
            target = module.get_submodule(path) if path else module
            located = forward_location(target, user_files)
        candidates.append({**forward, "parameter": None, **_loc(located)})
    if session.loss.report()["nonfinite_steps"]:
        step = session.loss.report()["nonfinite_steps"][0]
        candidates.append(
            {"step": step, "phase": "loss", "module": None, "parameter": None, **_loc(None)}
        )
    grads = session.grads.first_nonfinite
    if grads is not None:
        pid = next((p for p, n in session.grads.names.items() if n == grads["parameter"]), None)
        located = None
        if pid is not None and pid in session.param_paths:
            root_id, path = session.param_paths[pid]
            located = attribute_location(session.roots[root_id], path, user_files)
        candidates.append(
            {
                "step": grads["step"],
                "phase": "backward",
                "module": None,
                "parameter": grads["parameter"],
                **_loc(located),
            }
        )
    if not candidates:
        return None
    return min(candidates, key=lambda c: (c["step"], PHASE_ORDER[c["phase"]]))


def _parameter_locations(
    session: Session, names: list[str], user_files: UserFiles
) -> list[dict[str, Any]]:
    by_name = {n: p for p, n in session.grads.names.items()}
    out = []
    for name in names:
        located: Location | None = None
        pid = by_name.get(name)
        if pid is not None and pid in session.param_paths:
            root_id, path = session.param_paths[pid]
            located = attribute_location(session.roots[root_id], path, user_files)
        out.append({"name": name, **_loc(located)})
    return out


def _model_summary(session: Session, user_files: UserFiles) -> dict[str, Any] | None:
    model = session.main_model()
    if model is None:
        return None
    args, kwargs = session.captured.get(id(model), ((), {}))
    tensors = [a for a in args if isinstance(a, torch.Tensor)] + [
        v for v in kwargs.values() if isinstance(v, torch.Tensor)
    ]
    located = class_location(model, user_files)
    forward = forward_location(model, user_files)
    return {
        "class": type(model).__name__,
        **_loc(located),
        "forward_line": forward.line if forward else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "captured_input": [describe(t) for t in tensors],
        "roots": sorted({type(m).__name__ for m in session.roots.values()}),
    }


def build(
    session: Session,
    config: ProbeConfig,
    user_files: UserFiles,
    run_outcome: dict[str, Any],
    wall_s: float,
    read_device: bool = True,
) -> dict[str, Any]:
    if read_device:
        session.flush()
        times = session.step_times_s()
    else:
        times = dict(session.step_seconds)
    steady = [t for s, t in sorted(times.items()) if s >= 1 and s != session.flops.step] or list(
        times.values()
    )
    median = statistics.median(steady) if steady else None
    steps_done = session.step if mode_of(session) == "train" else 0
    gradients = session.grads.report(steps_done)
    for key in ("never_received_grad", "grad_not_in_optimizer"):
        gradients[key] = _parameter_locations(session, gradients[key], user_files)
    cuda = cuda_in_use()
    document = {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL_NAME,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "script": user_files.relpath(user_files.script),
        "argv": list(config.script_args),
        "config": {
            "steps": config.steps,
            "time_budget_s": config.time_budget_s,
            "sample_every": config.sample_every,
            "flush_every": config.flush_every,
            "probes": sorted(config.probes),
            "determinism_steps": config.determinism_steps,
            "export": config.export,
            "int8": config.int8,
            "seed": config.seed,
        },
        "outcome": run_outcome,
        "mode": mode_of(session),
        "steps_completed": steps_done,
        "forward_passes": session.forwards,
        "updated_by_hand": session.manual_training and not session.optimizer_built,
        "root_forwards": session.root_forwards,
        "device": {
            "cuda_available": torch.cuda.is_available(),
            "cuda_used": cuda,
            "name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        },
        "timing": {
            "wall_s": wall_s,
            # indexed by step; None where a step has no time (step 0 under CUDA events)
            "step_ms": [
                times[s] * 1e3 if s in times else None for s in range(max(times, default=-1) + 1)
            ],
            "median_step_ms": median * 1e3 if median is not None else None,
            "source": "cuda-events" if len(session.cuda_events) >= 2 else "wall-clock",
        },
        "model": _model_summary(session, user_files),
        "loss": session.loss.report(),
        "gradients": gradients,
        "nonfinite": _nonfinite(session, user_files),
        "activations": session.forward.report(),
        "memory": session.memory.report(),
        "vram": session.vram.report() if read_device else None,
        "syncs": session.syncs.report(session.step),
        "dataloader": session.dataloader.report(times),
        "dataflow": session.dataflow.report(),
        "dtype_mixing": session.dataflow.dtype_mixing(),
        "root_signatures": session.root_shapes.report(),
        "value_ranges": session.values.report(),
        "data_functions": session.data_functions.report(),
        "group_metrics": session.groups.report() if session.groups is not None else None,
        "flops": session.flops.report(median) if config.flops else None,
        "energy": session.power.report(median),
        "mode_issues": session.mode.report(),
        "export": None,
        "int8": None,
        "compile": None,
        "determinism": None,
        "synthetic_datasets": list(standins.USED),
        "warnings": session.warnings.report(),
        "probe_errors": list(session.errors),
        "worker_processes_left": 0,
        "distributed": _distributed(session),
    }
    return document


def _distributed(session: Session) -> dict[str, Any] | None:
    probe = session.distributed
    if probe is None:
        return None
    probe.finish(session.main_model())
    return probe.report()


def write(document: dict[str, Any], path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(_clean(document), handle, indent=1, allow_nan=False, default=str)
    os.replace(temporary, path)
