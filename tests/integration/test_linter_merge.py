"""Native rules and peer linters on the same file: one finding per problem, several witnesses.

The native engine and the real tools both run on tests/fixtures/linters; whatever a tool
reports about a problem a native rule already found (same concern, same place) is attached to
that finding, and what only the tools saw stays standalone evidence.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.linters import merge_linter_evidence, native_key, run_linters
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.detect_secrets import DetectSecretsAdapter
from torchdoctor.agent.checks.linters.ruff import RuffAdapter
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter

FIXTURES = Path(__file__).parents[1] / "fixtures" / "linters"
FILES = ["train_legacy.py", "settings.py", "clean.py"]


@pytest.mark.skipif(
    not all(a.available() for a in (TorchFixAdapter(), BanditAdapter(), DetectSecretsAdapter())),
    reason="torchfix, bandit or detect-secrets is not installed",
)
def test_tool_findings_attach_to_the_native_findings_they_confirm() -> None:
    static = analyse_files([(name, (FIXTURES / name).read_text()) for name in FILES])
    native = {(f.rule, f.line): f for f in static.all_findings()}
    adapters = [TorchFixAdapter(), BanditAdapter(), RuffAdapter(), DetectSecretsAdapter()]
    run = run_linters(FIXTURES, FILES, adapters)

    attached, standalone = merge_linter_evidence(static.all_findings(), run.evidence)

    def codes(rule: str, line: int) -> list[str]:
        return sorted(e.data["code"] for e in attached[native_key(native[(rule, line)])])

    assert codes("torch-load-unsafe", 12) == ["B614", "TOR102"]
    assert codes("deprecated-torch-api", 16) == ["TOR101"]
    assert codes("requires-grad-typo", 27) == ["TOR002"]
    assert codes("checkpoint-use-reentrant", 30) == ["TOR003"]
    assert codes("pickle-model-artifacts", 21) == ["B301"]
    assert codes("hardcoded-secrets", 3) == ["AWS Access Key"]
    alone = {(e.source, e.data["code"]) for e in standalone}
    assert ("bandit", "B602") in alone  # shell=True: no native rule reports it
    assert len(standalone) + sum(map(len, attached.values())) == len(run.evidence)
