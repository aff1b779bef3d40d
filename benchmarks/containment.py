"""Containment tables. First: every hostile script of tests/security/attacks through every
backend this host can provide (bwrap, unshare, bare rlimits, Docker on a private engine), judged
from the host. Second: the host-side attacks of tests/security/host_attacks.py, where
torchdoctor itself reads, writes and runs git in a hostile repository. Prints one row per
attack and exits non-zero if a non-degraded backend leaked or a host-side attack escaped.

    .venv/bin/python benchmarks/containment.py [--backends local-bwrap,...] [--host-only]

The rlimits row is the degraded fallback, shown so that its gaps are visible: it has no network
or filesystem isolation, and is run with the system python3 that an unprivileged uid can reach.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.security.attack_harness import ATTACKS, Arena, Verdict
from tests.security.host_attacks import HOST_ATTACKS, HostScene
from torchdoctor.sandbox.config import LocalConfig
from torchdoctor.sandbox.mechanisms import Mechanism
from torchdoctor.sandbox.private_engine import (
    EngineUnavailable,
    engine_config,
    import_test_image,
    private_engine,
)
from torchdoctor.sandbox.protocol import Sandbox

ALL_BACKENDS = ["local-bwrap", "local-unshare", "local-rlimits", "docker"]


def local(name: str, run_root: Path) -> Sandbox | str:
    mechanism = Mechanism(name.removeprefix("local-"))
    config = LocalConfig(mechanism=mechanism.value, run_root=run_root)
    sandbox = config.build()
    probe = sandbox.probe(mechanism)
    system_python = Path("/usr/bin/python3")
    if not probe.works and mechanism is Mechanism.RLIMITS and system_python.exists():
        config = config.model_copy(update={"python": system_python})
        sandbox = config.build()
        probe = sandbox.probe(mechanism)
    return sandbox if probe.works else f"unavailable: {probe.detail}"


def run_backend(name: str, scratch: Path) -> tuple[list[Verdict], str]:
    with Arena(scratch / name) as arena:
        if name == "docker":
            try:
                with private_engine(scratch / "engine") as url:
                    import_test_image(url)
                    config = engine_config(url).model_copy(update={"run_root": arena.run_root})
                    sandbox = config.build()
                    verdicts = [arena.attack(sandbox, name, a) for a in ATTACKS]
                    return verdicts, sandbox.isolation.summary
            except EngineUnavailable as exc:
                return [], f"unavailable: {exc}"
        built = local(name, arena.run_root)
        if isinstance(built, str):
            return [], built
        return [arena.attack(built, name, a) for a in ATTACKS], built.isolation.summary


def host_side_table() -> bool:
    """Run every host-side attack in a fresh scene; print the second table; True if all held."""
    print(f"\n| {'host-side attack':<21} | {'s':>5} | held |")
    print(f"|{'-' * 23}|{'-' * 7}|{'-' * 6}|")
    held = 0
    with tempfile.TemporaryDirectory(prefix="td-host-side-") as tmp:
        os.environ["TORCHDOCTOR_HOME"] = str(Path(tmp) / "home")
        for index, (name, attack) in enumerate(HOST_ATTACKS.items()):
            started = time.monotonic()
            escaped = attack(HostScene(Path(tmp) / f"scene-{index}"))
            seconds = round(time.monotonic() - started, 2)
            mark = "yes" if not escaped else "NO: " + "; ".join(escaped)
            held += not escaped
            print(f"| {name:<21} | {seconds:>5} | {mark}")
    print(f"\n{held}/{len(HOST_ATTACKS)} host-side attacks held")
    return held == len(HOST_ATTACKS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--host-only", action="store_true", help="only the second table")
    args = parser.parse_args()
    if args.host_only:
        return 0 if host_side_table() else 1
    rows: list[Verdict] = []
    leaked_strict = False
    with tempfile.TemporaryDirectory(prefix="td-containment-") as tmp:
        Path(tmp).chmod(0o755)
        for name in args.backends.split(","):
            verdicts, summary = run_backend(name, Path(tmp))
            print(f"{name:14} {summary}")
            rows += verdicts
            degraded = any(v.result.isolation.degraded for v in verdicts)
            leaked_strict |= not degraded and any(not v.contained for v in verdicts)
    print()
    print(f"| {'attack':<17} | {'backend':<13} | {'outcome':<13} | {'s':>5} | contained |")
    print(f"|{'-' * 19}|{'-' * 15}|{'-' * 15}|{'-' * 7}|{'-' * 11}|")
    for v in rows:
        mark = "yes" if v.contained else "NO: " + "; ".join(v.violations)
        print(
            f"| {v.attack:<17} | {v.backend:<13} | {v.result.outcome:<13} | {v.seconds:>5} | {mark}"
        )
    contained = sum(v.contained for v in rows)
    print(f"\n{contained}/{len(rows)} contained")
    host_held = host_side_table()
    return 1 if leaked_strict or not host_held else 0


if __name__ == "__main__":
    raise SystemExit(main())
