"""Run the user's script as `__main__` under the probes, stop it cleanly, and write the
evidence document whatever happens (finish, crash, hang, `sys.exit`, no optimizer)."""

from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import random
import runpy
import sys
import time
import traceback
from typing import Any

import torch

from torchdoctor.sandbox.probes import datasets as standins
from torchdoctor.sandbox.probes import determinism, document, posthoc
from torchdoctor.sandbox.probes.config import ProbeConfig
from torchdoctor.sandbox.probes.control import StopRun, TimeBudgetExceeded, Watchdog
from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.linetrace import LineTrace
from torchdoctor.sandbox.probes.outcome import from_exception, from_exit, outcome
from torchdoctor.sandbox.probes.session import Session

POSTHOC_BUDGET_S = 300.0


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        numpy: Any = importlib.import_module("numpy")
    except ImportError:
        return
    numpy.random.seed(seed)


def _natural_end(session: Session) -> dict[str, Any]:
    mode = document.mode_of(session)
    if mode == "train":
        return outcome("script-finished", f"script ended after {session.step} steps")
    if mode == "inference":
        return outcome("no-optimizer", f"no optimizer was built; {session.forwards} forward passes")
    return outcome("no-model", "no nn.Module forward ran")


def _run_script(config: ProbeConfig, session: Session, user_files: UserFiles) -> dict[str, Any]:
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    sys.argv = [config.script, *config.script_args]
    # `python -m` heads sys.path with the working folder, `python file.py` with its folder
    sys.path.insert(0, os.getcwd() if config.module else user_files.root)
    try:
        if config.module:
            runpy.run_module(config.module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(config.script, run_name="__main__")
        return _natural_end(session)
    except StopRun:
        return outcome(
            "completed-steps", f"stopped after {config.steps} {document.step_unit(session)}"
        )
    except TimeBudgetExceeded:
        return outcome("time-budget", f"stopped after {config.time_budget_s:g} s")
    except SystemExit as exc:
        return from_exit(exc)
    except BaseException as exc:
        result = from_exception(exc, user_files)
        exc.__traceback__ = None
        return result
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def _reap_workers() -> int:
    """Let DataLoader iterators die, then make sure no worker process outlives the run. The
    collection (what frees an iterator caught in a reference cycle, whose workers then exit)
    is made only when a worker is still alive: a full one walks everything the run built."""
    if multiprocessing.active_children():
        gc.collect()
    children = multiprocessing.active_children()
    for child in children:
        child.join(timeout=2)
    for child in multiprocessing.active_children():
        child.terminate()
        child.join(timeout=2)
    return len(multiprocessing.active_children())


def _posthoc(config: ProbeConfig, session: Session, doc: dict[str, Any]) -> None:
    model = session.main_model()
    if model is None or id(model) not in session.captured:
        # not tried: nothing says whether the model exports (an export script's own
        # torch.onnx.export traces the model without an eager forward the probes see)
        reason = {"ok": False, "error": "no model with a captured input", "tried": False}
        doc["export"] = {"torch_export": reason} if config.export else None
        doc["int8"] = reason if config.int8 else None
        doc["compile"] = reason if "compile" in config.probes else None
        return
    device = posthoc.model_device(model)
    args, kwargs = (posthoc.to_device(x, device) for x in session.captured[id(model)])
    if config.export:
        doc["export"] = posthoc.try_export(model, args, kwargs)
    if config.int8:
        doc["int8"] = posthoc.try_int8(model, args, kwargs)
    if "compile" in config.probes:
        doc["compile"] = posthoc.try_compile(
            model, args, kwargs, document.mode_of(session) == "train", config.compile_backend
        )


def run(config: ProbeConfig) -> int:
    """Run, measure, write `config.out`. Returns 0 when the evidence was written."""
    user_files = UserFiles(config.script)
    main_pid = os.getpid()
    started = time.perf_counter()
    if config.seed is not None:
        _seed(config.seed)
    standins.install()
    session = Session(config, user_files)
    state: dict[str, Any] = {
        "outcome": outcome(
            "time-budget", "the script did not return after the time budget; the process was ended"
        )
    }

    def write_when_stuck() -> None:
        doc = document.build(
            session,
            config,
            user_files,
            state["outcome"],
            time.perf_counter() - started,
            read_device=False,
        )
        document.write(doc, config.out)

    watchdog = Watchdog(config.time_budget_s, config.grace_s, write_when_stuck)
    lines = LineTrace(config.trace_files, os.getcwd())
    try:
        session.install()
        watchdog.start()
        lines.start()
        run_outcome = _run_script(config, session, user_files)
    finally:
        lines.stop()
        watchdog.stop()
        session.uninstall()
    if os.getpid() != main_pid:
        os._exit(0)
    try:
        left = _reap_workers()
        doc = document.build(
            session, config, user_files, run_outcome, time.perf_counter() - started
        )
        doc["worker_processes_left"] = left
        doc["executed_lines"] = lines.report()
        document.write(doc, config.out)
        if _failed(doc):
            return 0
        posthoc_guard = Watchdog(POSTHOC_BUDGET_S, config.grace_s, lambda: None)
        posthoc_guard.start()
        try:
            _posthoc(config, session, doc)
        except TimeBudgetExceeded:
            doc["probe_errors"].append("post-run probes ran out of time")
        finally:
            posthoc_guard.stop()
        if config.determinism_steps > 0:
            doc["determinism"] = determinism.probe(config, doc)
        document.write(doc, config.out)
    except Exception:
        document.write(_harness_error(config, run_outcome), config.out)
    return 0


def _failed(doc: dict[str, Any]) -> bool:
    """The run did not get far enough for export, int8 or seeded re-runs to mean anything (the
    host reports only the failure then: agent/evidence/probes.py `run_failed`), so they are
    not spent."""
    kind, exit_code = doc["outcome"]["kind"], doc["outcome"].get("exit_code")
    if kind == "script-error" or (kind == "sys-exit" and exit_code not in (None, 0)):
        return True
    return bool(kind == "time-budget" and doc["steps_completed"] + doc["forward_passes"] <= 1)


def _harness_error(config: ProbeConfig, run_outcome: dict[str, Any]) -> dict[str, Any]:
    from torchdoctor.sandbox.probes import SCHEMA_VERSION, TOOL_NAME

    return {
        "schema_version": SCHEMA_VERSION,
        "tool": TOOL_NAME,
        "script": os.path.basename(config.script),
        "outcome": outcome(
            "harness-error",
            traceback.format_exc(limit=6)[-2000:],
            script_outcome=run_outcome["kind"],
        ),
    }
