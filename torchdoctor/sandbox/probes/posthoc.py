"""Probes run once after the script stops, on the captured model and a real captured input:
export (item 7.1), INT8 dynamic quantization (item 7.2), torch.compile cost/benefit (8.2)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.sandbox.probes.tensors import cuda_in_use

INT8_REPEATS = 7
COMPILE_REPEATS = 10


def _error(exc: BaseException) -> dict[str, Any]:
    lines = traceback.format_exception_only(type(exc), exc)
    return {"ok": False, "error_type": type(exc).__name__, "error": "".join(lines)[-1500:]}


def _eval_copy(model: torch.nn.Module) -> torch.nn.Module:
    clone = copy.deepcopy(model)
    clone.eval()
    return clone


def try_export(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    clone = _eval_copy(model)
    try:
        start = time.perf_counter()
        program = torch.export.export(clone, args, kwargs)
        result["torch_export"] = {
            "ok": True,
            "seconds": time.perf_counter() - start,
            "nodes": len(program.graph.nodes),
        }
    except Exception as exc:
        result["torch_export"] = _error(exc)
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        result["onnx"] = {
            "ok": False,
            "available": False,
            "error": f"not available: {', '.join(missing)} not installed",
        }
        return result
    try:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            torch.onnx.export(clone, args, f"{folder}/model.onnx", kwargs=kwargs, dynamo=True)
            result["onnx"] = {"ok": True, "available": True, "seconds": time.perf_counter() - start}
    except Exception as exc:
        result["onnx"] = {**_error(exc), "available": True}
    return result


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(o, device) for o in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def model_device(model: torch.nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _first_output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _quantize(reference: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """Dynamic INT8 of the Linear layers: torch.ao where it still exists, else torchao."""
    quantize_dynamic = getattr(torch.ao.quantization, "quantize_dynamic", None)
    if quantize_dynamic is not None:
        quantized = quantize_dynamic(copy.deepcopy(reference), {torch.nn.Linear}, dtype=torch.qint8)
        return "torch.ao.quantization.quantize_dynamic", quantized
    torchao: Any = importlib.import_module("torchao.quantization")
    quantized = copy.deepcopy(reference)
    torchao.quantize_(quantized, torchao.Int8DynamicActivationInt8WeightConfig())
    return "torchao.quantization.quantize_(Int8DynamicActivationInt8WeightConfig)", quantized


def try_int8(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Dynamic INT8 quantization of the Linear layers on CPU: output drift and speed."""
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    if linears == 0:
        return {"ok": False, "linear_layers": 0, "error": "no nn.Linear layers to quantize"}
    try:
        reference = _eval_copy(model).cpu().float()
        cpu = torch.device("cpu")
        cpu_args, cpu_kwargs = to_device(args, cpu), to_device(kwargs, cpu)
        method, quantized = _quantize(reference)
        with torch.inference_mode():
            expected = _first_output(reference(*cpu_args, **cpu_kwargs))
            got = _first_output(quantized(*cpu_args, **cpu_kwargs))
            fp32_s = _median_seconds(lambda: reference(*cpu_args, **cpu_kwargs), INT8_REPEATS)
            int8_s = _median_seconds(lambda: quantized(*cpu_args, **cpu_kwargs), INT8_REPEATS)
        if expected is None or got is None:
            return {"ok": False, "linear_layers": linears, "error": "output is not a tensor"}
        diff = (expected.float() - got.float()).abs()
        scale = expected.float().abs().max().clamp_min(1e-12)
        return {
            "ok": True,
            "method": method,
            "linear_layers": linears,
            "max_abs_diff": float(diff.max()),
            "max_rel_diff": float(diff.max() / scale),
            "fp32_ms": fp32_s * 1e3,
            "int8_ms": int8_s * 1e3,
            "latency_ratio": int8_s / fp32_s if fp32_s > 0 else None,
        }
    except Exception as exc:
        return {**_error(exc), "linear_layers": linears}


def _synchronize() -> None:
    if cuda_in_use():
        torch.cuda.synchronize()


def try_compile(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    training: bool,
    backend: str,
) -> dict[str, Any]:
    """Eager vs compiled step time on the captured input; compile time; break-even steps.
    A training step is proxied by forward + `sum().backward()` on the first output."""

    def step_of(module: Callable[..., Any]) -> Callable[[], None]:
        def run() -> None:
            out = _first_output(module(*args, **kwargs))
            if training and out is not None and out.requires_grad:
                out.float().sum().backward()  # type: ignore[no-untyped-call]
            _synchronize()

        return run

    try:
        eager = copy.deepcopy(model)
        eager_s = _median_seconds(step_of(eager), COMPILE_REPEATS)
        compiled = torch.compile(copy.deepcopy(model), backend=backend)
        compiled_step = step_of(compiled)
        start = time.perf_counter()
        compiled_step()
        first_s = time.perf_counter() - start
        compiled_s = _median_seconds(compiled_step, COMPILE_REPEATS)
    except Exception as exc:
        return _error(exc)
    compile_s = max(first_s - compiled_s, 0.0)
    saving = eager_s - compiled_s
    return {
        "ok": True,
        "backend": backend,
        "training_proxy": training,
        "compile_s": compile_s,
        "eager_step_ms": eager_s * 1e3,
        "compiled_step_ms": compiled_s * 1e3,
        "speedup": eager_s / compiled_s if compiled_s > 0 else None,
        "break_even_steps": int(compile_s / saving) + 1 if saving > 0 else None,
    }
