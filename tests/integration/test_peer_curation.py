"""Peers as evidence: curated codes stay findings, the rest is context, and false positives
that torchdoctor's reading of the code rules out are suppressed (real TorchFix and bandit)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.linters import run_linters
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.ruff import RuffAdapter
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.gather import linter_evidence, run_static
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.workspace import load_workspace

FIXTURE = Path(__file__).parents[1] / "fixtures" / "peers"
FLOOR = Path(__file__).parents[1] / "fixtures" / "peers_floor"  # requires torch>=2.7
pytestmark = pytest.mark.skipif(
    not (TorchFixAdapter().available() and BanditAdapter().available()),
    reason="torchfix or bandit is not installed",
)


def _peer_run(folder: Path, files: list[str]) -> tuple[object, object, list[Evidence]]:
    workspace = load_workspace(folder)
    static = run_static(workspace, AuditConfig())
    run = run_linters(folder, files, [TorchFixAdapter(), BanditAdapter(), RuffAdapter()])
    return workspace, static, run


@pytest.fixture(scope="module")
def peer_run() -> tuple[object, object, list[Evidence]]:
    files = ["train.py", "prompts.py", "tools.py", "tests/test_pretraining.py"]
    return _peer_run(FIXTURE, files)


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
    # every place curated reports, --peers all reports too (a bare except that bandit B110
    # also flags is then one finding of B110's, confirmed by ruff's E722)
    assert {line for _, line in curated} <= {line for _, line in every}
    assert len(curated) < len(every)


def test_peer_false_positives_the_code_rules_out_are_suppressed(peer_run: tuple) -> None:
    ruled_out = _ruled_out(peer_run)
    assert "**kwargs" in ruled_out[("TOR401", 28)]
    assert "augmentations" in ruled_out[("B311", 15)]
    assert ("B311", 21) not in ruled_out  # a session token: random is the wrong tool there
    assert "safe_globals" in ruled_out[("B614", 41)]
    assert ("B614", 46) not in ruled_out  # weights_only=False stays unsafe
    every = _findings(peer_run, "all")
    assert ("B311", 21) in every and ("B311", 15) not in every


def test_tokenizer_tokens_are_not_passwords_and_test_loaders_need_no_workers(
    peer_run: tuple,
) -> None:
    ruled_out = _ruled_out(peer_run)
    for line in (6, 7, 13, 19, 20):  # bos/eos/dummy tokens and token ids
        assert "not a credential" in ruled_out[("B105", line)]
    assert ("B105", 23) not in ruled_out  # an access token is a credential
    assert "test module" in ruled_out[("TOR401", 9)]
    assert ("TOR401", 32) not in ruled_out  # the training script's loader stays a finding


def test_constant_shell_commands_and_deliberate_catch_alls_are_ruled_out(
    peer_run: tuple,
) -> None:
    ruled_out = _ruled_out(peer_run)
    assert "constant command" in ruled_out[("B602", 9)]
    assert ("B602", 13) not in ruled_out  # values interpolated into the command
    assert "KeyboardInterrupt" in ruled_out[("E722", 23)]
    assert ("E722", 31) not in ruled_out  # a plain bare except still hides an interrupt


def test_loads_are_weights_only_where_the_project_allows_no_older_torch() -> None:
    ruled_out = _ruled_out(_peer_run(FLOOR, ["merge.py"]))
    for code, line in (("B614", 9), ("B614", 10), ("TOR102", 9), ("TOR102", 10)):
        assert "no torch older than 2.6" in ruled_out[(code, line)]
    for code, line in (("B614", 16), ("TOR102", 16), ("B614", 20)):
        assert (code, line) not in ruled_out  # a custom unpickler, an explicit False


def test_two_tools_flagging_one_load_make_one_finding(peer_run: tuple) -> None:
    workspace, static, run = peer_run
    pairs, _ = linter_evidence(workspace, static, run, "curated")
    on_load = [ev for _, ev in pairs if ev.file == "train.py" and ev.line == 50]
    assert {ev.data["code"] for ev in on_load} == {"B614", "TOR102"}
    request = PointRequest(point=11, evidence=[ev for point, ev in pairs if point == 11])
    found = [f for f in OfflineReasoner().reason(request).findings if f.line == 50]
    assert len(found) == 1
    assert {ev.data.get("code") for ev in found[0].evidence} == {"B614", "TOR102"}


def test_one_code_repeated_in_a_file_is_one_finding_naming_its_other_lines() -> None:
    """Three unpinned `from_pretrained` calls (bandit B615) are one habit of one file: one
    finding at the first, the other lines attached to it as evidence and named."""
    folder = FIXTURE.parent / "peers_repeated"
    workspace, static, run = _peer_run(folder, ["load_models.py"])
    pairs, _ = linter_evidence(workspace, static, run, "curated")  # type: ignore[arg-type]
    unpinned = [ev for _, ev in pairs if ev.data.get("code") == "B615"]
    assert [ev.line for ev in unpinned] == [7, 8, 9]
    request = PointRequest(point=11, evidence=[ev for point, ev in pairs if point == 11])
    (found,) = [f for f in OfflineReasoner().reason(request).findings if f.rule == "bandit-b615"]
    assert found.line == 7 and [ev.line for ev in found.evidence] == [7, 8, 9]
    assert found.evidence[0].message.endswith("(file-wide, also lines 8, 9)")
