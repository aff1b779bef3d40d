"""One namespace of rule ids (issue 13, item 3): native, probe and peer rules are known alike,
selected and silenced alike, and mistyped ids get the closest ones suggested."""

from __future__ import annotations

from torchdoctor.agent.checks.catalogue import (
    catalogue,
    closest,
    is_known,
    peer_rule_id,
    suppressed_inline,
    tool_of,
    unknown_names_message,
)
from torchdoctor.agent.checks.registry import all_rules, enabled_rules
from torchdoctor.agent.checks.selection import drop_silenced
from torchdoctor.agent.models import Evidence

SOURCE = (
    "exec(code)\n"
    "exec(code)  # torchdoctor: ignore[bandit-b102]\n"
    "exec(code)  # torchdoctor: ignore[bandit]\n"
)


def bandit(line: int) -> Evidence:
    return Evidence(
        source="bandit",
        kind="linter",
        message="Use of exec detected.",
        file="train.py",
        line=line,
        data={"code": "B102", "items": ["11.2"], "point": 11, "severity": "medium"},
    )


def probe(rule: str) -> Evidence:
    return Evidence(
        source="torchdoctor-probes",
        kind="probe",
        message="...",
        file="train.py",
        line=1,
        data={"finding": {"rule": rule, "severity": "medium", "title": "t"}, "point": 5},
    )


def test_every_native_rule_is_in_the_catalogue_with_its_docstring() -> None:
    known = catalogue()
    for rule in all_rules():
        assert known[rule.id].kind == "native"
        assert known[rule.id].doc, rule.id


def test_peer_rules_carry_their_tools_text_and_a_link() -> None:
    peers = [r for r in catalogue().values() if r.kind == "peer"]
    assert {r.tool for r in peers} == {
        "torchfix", "ruff", "bandit", "detect-secrets", "pip-audit", "mypy",
    }  # fmt: skip
    for rule in peers:
        assert rule.title and rule.link.startswith("https://"), rule.id
    assert catalogue()["bandit-b614"].point == 11
    assert tool_of("torchfix-tor102") == "torchfix"
    assert tool_of("zero-grad-missing") is None


def test_ids_tools_points_and_open_code_tools_are_known() -> None:
    for name in ("zero-grad-missing", "probe-nan", "bandit-b102", "bandit", "3", "all"):
        assert is_known(name), name
    assert is_known("pip-audit-pysec-2024-77"), "vulnerability ids are an open set"
    assert not is_known("bandit-b9999")
    assert not is_known("13")


def test_unknown_names_are_reported_once_each_with_suggestions() -> None:
    message = unknown_names_message(["zero-grad-mising", "zero-grad-mising", "eval"], "--ignore")
    assert message is not None
    assert message.count("zero-grad-mising") == 1
    assert "did you mean zero-grad-missing" in message
    assert unknown_names_message(["bandit", "probe-nan"], "--ignore") is None
    assert closest("bandt")[0] == "bandit"


def test_inline_suppression_names_ids_exactly_or_a_whole_tool() -> None:
    assert suppressed_inline("x  # torchdoctor: ignore", "anything")
    assert suppressed_inline("x  # torchdoctor: ignore[a-b, bandit-b102]", "bandit-b102")
    assert suppressed_inline("x  # torchdoctor: ignore[bandit]", "bandit-b102")
    assert not suppressed_inline("x  # torchdoctor: ignore[zero-grad]", "zero-grad-missing")
    assert not suppressed_inline("x  # torchdoctor: ignore[ruff]", "bandit-b102")


def test_peer_and_probe_evidence_is_silenced_like_native_rules() -> None:
    pairs = [(11, bandit(1)), (11, bandit(2)), (11, bandit(3)), (5, probe("probe-nan"))]
    kept = drop_silenced(pairs, [], lambda _path: SOURCE)
    assert [ev.line for _, ev in kept] == [1, 1]
    assert drop_silenced(pairs, ["bandit"], lambda _path: SOURCE) == [pairs[3]]
    assert len(drop_silenced(pairs, ["bandit-b102", "probe-nan"], lambda _p: SOURCE)) == 0
    assert peer_rule_id("detect-secrets", "Secret Keyword") == "detect-secrets-secret-keyword"


def test_a_point_number_or_all_in_ignore_silences_native_and_peer_rules_alike() -> None:
    pairs = [(11, bandit(1)), (5, probe("probe-nan"))]
    assert catalogue()["bandit-b102"].point == 11
    assert drop_silenced(pairs, ["11"], lambda _path: SOURCE) == [pairs[1]]
    assert drop_silenced(pairs, ["all"], lambda _path: SOURCE) == []
    point_one = {rule.id for rule in all_rules() if rule.point == 1}
    assert point_one and not point_one & {
        rule.id for rule in enabled_rules(ignore=frozenset({"1"}))
    }
    assert enabled_rules(ignore=frozenset({"all"})) == ()
    opt_in = [rule for rule in all_rules() if rule.tier != "default"]
    assert all(rule in enabled_rules(select=frozenset({str(rule.point)})) for rule in opt_in)
