"""Determinism probe (item 5.1): the same script, the same seed, two fresh processes, K steps
each; the loss sequences are compared value by value.

The two runs get different `PYTHONHASHSEED`s, as two launches of the script would. When they
diverge, a third run repeats the first one's hash seed: if it then agrees with the first, what
escapes the seed is the iteration order of a set (or another hash-ordered collection) of
strings, the classic `list(set(words))` vocabulary whose word indices change from one launch
to the next, and the report says so."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config imports torch; the host reads this module's constants without it
    from torchdoctor.sandbox.probes.config import ProbeConfig

SEED = 1234
RELATIVE_TOLERANCE = 1e-5
_PACKAGE_ROOT = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
)


HASH_SEEDS = ("0", "1")
"""The two runs' `PYTHONHASHSEED`s; a third run, when they diverge, repeats the first."""


def _run_once(config: ProbeConfig, out: str, hash_seed: str) -> dict[str, Any] | None:
    command = [
        sys.executable,
        "-m",
        "torchdoctor.sandbox.probes",
        config.script,
        "--steps",
        str(config.determinism_steps),
        "--seed",
        str(SEED),
        "--out",
        out,
        "--time-budget",
        str(config.time_budget_s),
        "--sample-every",
        "0",
        "--no-flops",
        *(["--module", config.module] if config.module else []),
        "--",
        *config.script_args,
    ]
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = hash_seed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        subprocess.run(
            command,
            env=env,
            timeout=config.time_budget_s + config.grace_s + 30,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        with open(out, encoding="utf-8") as handle:
            document: dict[str, Any] = json.load(handle)
            return document
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def compare(first: list[float | None], second: list[float | None]) -> dict[str, Any]:
    pairs = list(zip(first, second, strict=False))
    max_abs = max_rel = 0.0
    first_divergence: int | None = None
    bitwise = len(first) == len(second)
    for index, (a, b) in enumerate(pairs):
        if a is None or b is None:
            same = a is b
            abs_diff = rel_diff = 0.0 if same else math.inf
        else:
            abs_diff = abs(a - b)
            rel_diff = abs_diff / max(abs(a), abs(b), 1e-12)
            same = a == b
        bitwise = bitwise and same
        max_abs, max_rel = max(max_abs, abs_diff), max(max_rel, rel_diff)
        if rel_diff > RELATIVE_TOLERANCE and first_divergence is None:
            first_divergence = index
    return {
        "steps_compared": len(pairs),
        "bitwise_equal": bitwise,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "tolerance": RELATIVE_TOLERANCE,
        "deterministic": first_divergence is None and len(pairs) > 0,
        "first_divergent_step": first_divergence,
    }


def probe(config: ProbeConfig, doc: dict[str, Any]) -> dict[str, Any]:
    """The seeded runs compared; not run when the instrumented run `doc` never reached a model
    (no step, no forward, no loss): the script ran to its own end without one, so two more
    runs of it (a script that only sleeps or prints, at its full length) would record no loss
    to compare either. The result then reads as theirs would: nothing compared."""
    if doc["steps_completed"] + doc["forward_passes"] == 0 and not doc["loss"]["values"]:
        return {"ok": True, "seed": SEED, "outcomes": [], "losses": [], **compare([], [])}
    with tempfile.TemporaryDirectory(prefix="probes-determinism-") as folder:
        runs = [
            _run_once(config, os.path.join(folder, f"run{i}.json"), hash_seed)
            for i, hash_seed in enumerate(HASH_SEEDS)
        ]
        if any(r is None for r in runs):
            return {"ok": False, "seed": SEED, "error": "a seeded run wrote no evidence"}
        losses = [r["loss"]["values"] for r in runs if r is not None]
        compared = compare(losses[0], losses[1])
        if not compared["deterministic"] and compared["steps_compared"]:
            again = _run_once(config, os.path.join(folder, "again.json"), HASH_SEEDS[0])
            repeated = again["loss"]["values"] if again is not None else None
            if repeated is not None and compare(losses[0], repeated)["deterministic"]:
                compared["cause"] = "hash-order"
    return {
        "ok": True,
        "seed": SEED,
        "outcomes": [r["outcome"]["kind"] for r in runs if r is not None],
        "losses": losses,
        **compared,
    }
