"""One finding per problem (issue 13, item 4): a run finding on the same code as a static
finding of the same problem merges into it; confirmations show the code once; full titles."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.linters.runner import LinterRun
from torchdoctor.agent.evidence.confirm import attach_run_confirmations
from torchdoctor.agent.gather import linter_evidence
from torchdoctor.agent.models import Evidence, Severity
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.workspace import load_workspace

EXCERPT = "  8 | for x in data:\n> 9 |     total += loss\n 10 | print(total)"


def static(rule: str = "loss-graph-accumulation", line: int = 9) -> RawFinding:
    return RawFinding(
        rule=rule,
        file="train.py",
        line=line,
        end_line=line,
        code="total += loss",
        message="`total` accumulates the loss tensor with its graph",
        severity=Severity.HIGH,
        excerpt=EXCERPT,
    )


def run_finding(rule: str = "probe-graph-retention", line: int = 9) -> Evidence:
    return Evidence(
        source="torchdoctor-probes",
        kind="probe",
        message="`total` keeps every step's autograd graph alive",
        file="train.py",
        line=line,
        excerpt=EXCERPT,
        data={
            "items": ["1.4"],
            "verdict": "fail",
            "point": 1,
            "finding": {"rule": rule, "severity": "high", "title": "t", "line": line},
        },
    )


def test_a_run_finding_on_the_same_code_merges_into_the_static_finding() -> None:
    pairs = attach_run_confirmations([static()], [(1, run_finding())])
    assert len(pairs) == 1
    point, ev = pairs[0]
    assert point == 1 and "finding" not in ev.data
    result = OfflineReasoner().reason(PointRequest(point=1, raw_findings=[static()], evidence=[ev]))
    assert [f.rule for f in result.findings] == ["loss-graph-accumulation"]
    sources = [e.source for e in result.findings[0].evidence]
    assert sources == ["torchdoctor-static", "torchdoctor-probes"]
    assert result.findings[0].evidence[1].excerpt == "", "the code is shown once"


def test_the_merged_run_finding_moves_to_the_static_rules_point() -> None:
    host_sync = RawFinding(**{**static().model_dump(), "rule": "host-sync-in-step"})
    pairs = attach_run_confirmations([host_sync], [(6, run_finding("probe-host-sync"))])
    assert pairs[0][0] == 6 and pairs[0][1].data["confirms"] == "host-sync-in-step"


@pytest.mark.parametrize(
    "rule",
    ["syntax-error", "scalar-loss-indexed", "removed-torch-api", "flatten-view-of-transposed"],
)
def test_a_run_stopped_at_a_line_a_rule_says_raises_is_that_rules_finding(rule: str) -> None:
    """Held-out pytorch-REINFORCE: the TabError of main.py:78 was a critical syntax-error
    finding and a high 'The script fails when run' at the same line; held-out char-rnn: the
    IndexError of `loss.data[0]` was scalar-loss-indexed and the same crash again."""
    raising = RawFinding(**{**static().model_dump(), "rule": rule, "line": 78})
    raising = raising.model_copy(update={"end_line": 78})
    pairs = attach_run_confirmations([raising], [(2, run_finding("probe-script-error", 78))])
    assert pairs[0][0] == 1 and pairs[0][1].data["confirms"] == rule


def test_run_findings_elsewhere_or_of_another_problem_stay_findings() -> None:
    far = attach_run_confirmations([static()], [(1, run_finding(line=30))])
    other = attach_run_confirmations([static("double-softmax")], [(1, run_finding())])
    unrelated = attach_run_confirmations([static()], [(2, run_finding("probe-nan"))])
    for pairs in (far, other, unrelated):
        assert "finding" in pairs[0][1].data


def test_peer_finding_titles_are_never_cut(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("import torch\nx = torch.chain_matmul(a, b)\n")
    workspace = load_workspace(tmp_path)
    message = "Use of deprecated function torch.chain_matmul, " + "see the migration note " * 8
    ev = Evidence(
        source="torchfix",
        kind="linter",
        message=message,
        file="train.py",
        line=2,
        data={"code": "TOR101", "items": ["1.6"], "point": 1, "severity": "medium"},
    )
    pairs, _ = linter_evidence(workspace, analyse_files([]), LinterRun(evidence=[ev]))
    title = pairs[0][1].data["finding"]["title"]
    assert title == f"torchfix TOR101: {message}"


def test_a_division_in_a_module_level_function_is_reported_once() -> None:
    """mean-over-wrong-count walks the module's own statements and each function apart: a
    function at module level is not walked a second time as part of the module (held-out
    round 6: mixup-cifar10's test_loss / batch_idx came out twice, with two fingerprints)."""
    source = (
        "def evaluate(loader, net):\n"
        "    total = 0\n"
        "    for batch_idx, (x, y) in enumerate(loader):\n"
        "        total += net(x).sum().item()\n"
        "    return total / batch_idx, 1\n"
        "scores = 0\n"
        "for i, s in enumerate([1, 2, 3]):\n"
        "    scores += s\n"
        "print(scores / i)\n"
    )
    found = analyse_files([("evaluate.py", source)]).all_findings()
    assert sorted(f.line for f in found if f.rule == "mean-over-wrong-count") == [5, 9]


def test_seeds_undone_by_the_string_hash_join_the_vocabulary_finding() -> None:
    """Shape from a seq2seq tutorial (held out): the run proved that two seeded runs differ
    with PYTHONHASHSEED alone, a finding the run could not place (the script's first line),
    beside the static finding at the `list(set(...))` vocabulary it names as the cause."""
    from torchdoctor.agent.evidence.probes import probe_findings

    def determinism(cause: str | None) -> list[tuple[int, Evidence]]:
        doc = {
            "schema_version": 1,
            "tool": "torchdoctor-probes",
            "script": "train.py",
            "outcome": {"kind": "completed-steps", "detail": "stopped after 3 steps"},
            "mode": "train",
            "steps_completed": 3,
            "loss": {"steps": [0, 1, 2], "values": [1.0, 0.9, 0.8]},
            "determinism": {
                "ok": True,
                "seed": 1,
                "deterministic": False,
                "first_divergent_step": 0,
                "max_rel_diff": 0.01,
                "steps_compared": 3,
                "cause": cause,
            },
        }
        pairs = probe_findings(doc, "train.py").by_point()
        return [(p, ev) for p, ev in pairs if ev.data.get("probe") == "probe-nondeterministic"]

    vocabulary = static("vocabulary-in-set-order", line=83)
    (merged,) = attach_run_confirmations([vocabulary], determinism("hash-order"))
    assert merged[1].data["confirms"] == "vocabulary-in-set-order"
    # another cause (a clock-seeded generator) is not the vocabulary's: it stays a finding
    (kept,) = attach_run_confirmations([vocabulary], determinism(None))
    assert "finding" in kept[1].data
    # the vocabulary in another file: joined only when it is the project's only one
    elsewhere = [RawFinding(**{**vocabulary.model_dump(), "file": f"data{n}.py"}) for n in (1, 2)]
    assert (
        "confirms" in attach_run_confirmations(elsewhere[:1], determinism("hash-order"))[0][1].data
    )
    assert "finding" in attach_run_confirmations(elsewhere, determinism("hash-order"))[0][1].data
