"""Peers as evidence: curated codes stay findings, the rest is context, and false positives
that torchdoctor's reading of the code rules out are suppressed (real TorchFix and bandit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.linters import run_linters
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.gather import linter_evidence, run_static
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.workspace import load_workspace

FIXTURE = Path(__file__).parents[1] / "fixtures" / "peers"
pytestmark = pytest.mark.skipif(
    not (TorchFixAdapter().available() and BanditAdapter().available()),
    reason="torchfix or bandit is not installed",
)


@pytest.fixture(scope="module")
def peer_run() -> tuple[object, object, list[Evidence]]:
    workspace = load_workspace(FIXTURE)
    static = run_static(workspace, AuditConfig())
    run = run_linters(FIXTURE, ["train.py"], [TorchFixAdapter(), BanditAdapter()])
    return workspace, static, run


def _findings(peer_run: tuple[object, object, object], peers: str) -> set[tuple[str, int]]:
    workspace, static, run = peer_run
    pairs, _ = linter_evidence(workspace, static, run, peers)  # type: ignore[arg-type]
    return {(ev.data["code"], ev.line or 0) for _, ev in pairs if "finding" in ev.data}


def _ruled_out(peer_run: tuple[object, object, object]) -> dict[tuple[str, int], str]:
    workspace, static, run = peer_run
    pairs, _ = linter_evidence(workspace, static, run, "all")  # type: ignore[arg-type]
    return {
        (ev.data["code"], ev.line or 0): ev.data["ruled_out"]
        for _, ev in pairs
        if "ruled_out" in ev.data
    }


def test_curated_codes_stay_findings_and_the_rest_is_context(peer_run: tuple) -> None:
    curated = _findings(peer_run, "curated")
    every = _findings(peer_run, "all")
    assert ("TOR401", 32) in curated  # a plain DataLoader: synchronous loading, kept
    assert ("B113", 36) not in curated and ("B113", 36) in every  # requests timeout: context
    assert curated < every


def test_peer_false_positives_the_code_rules_out_are_suppressed(peer_run: tuple) -> None:
    ruled_out = _ruled_out(peer_run)
    assert "**kwargs" in ruled_out[("TOR401", 28)]
    assert "augmentations" in ruled_out[("B311", 15)]
    assert ("B311", 21) not in ruled_out  # a session token: random is the wrong tool there
    assert "safe_globals" in ruled_out[("B614", 41)]
    assert ("B614", 46) not in ruled_out  # weights_only=False stays unsafe
    every = _findings(peer_run, "all")
    assert ("B311", 21) in every and ("B311", 15) not in every
