"""vocabulary-in-set-order's fix on the rule's own positive shapes (every finding fixed, the
rule quiet after), and where it must refuse: a set kept as a set and iterated again elsewhere
(sorting one numbering would leave two mappings disagreeing), or a module's own `sorted`. The
symptom check reads the run under a second PYTHONHASHSEED (tests/integration/
test_fix_hash_order.py runs it in the sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shape_outcomes import findings
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget, RunSignals, SmokeRun

RULE = "vocabulary-in-set-order"
POSITIVE = (
    Path(__file__).parents[1]
    / "fixtures"
    / "rules"
    / RULE
    / "positive_vocabularies_numbered_in_set_order.py"
)


def _fix_first(source: str) -> tuple[str | None, str | None]:
    """The fix of the rule's first finding on `source`, or the codemod's reason."""
    codemod = codemod_for(RULE)
    assert codemod is not None
    found = findings(source, RULE)
    assert found
    target = FixTarget(
        rule=RULE, file="m.py", line=found[0].line, end_line=found[0].end_line, data=found[0].data
    )
    return codemod.transform(source, target), codemod.explain(source, target)


def test_every_shape_of_the_rule_is_fixed_and_the_rule_is_quiet_after() -> None:
    source = POSITIVE.read_text()
    count = len(findings(source, RULE))
    for _ in range(count):
        fixed, why = _fix_first(source)
        assert fixed is not None, why
        source = fixed
    assert not findings(source, RULE)
    for line in (
        'word_list = sorted(set(" ".join(sentences).split()))',
        "stoi = dict(zip(sorted(vocab), range(len(vocab))))",  # the set stays a set
        "for index, char in enumerate(sorted(set(text.strip()))):",
        "labels = sorted(set(w.lower() for w in words))",
        "tag_list = sorted(set(tag_list))",
    ):
        assert line in source


def test_a_set_iterated_again_elsewhere_is_sorted_where_built_by_a_human() -> None:
    source = (
        "def build(path):\n"
        "    tokens = open(path).read().split()\n"
        "    vocab = set(tokens)\n"
        "    stoi = dict(zip(vocab, range(len(vocab))))\n"
        "    itos = [w for w in vocab]\n"
        "    return stoi, itos, 'the' in vocab\n"
    )
    fixed, why = _fix_first(source)
    assert fixed is None
    assert why is not None and "also iterated elsewhere" in why


def test_membership_and_size_do_not_stop_the_fix() -> None:
    source = (
        "def build(path):\n"
        "    tokens = open(path).read().split()\n"
        "    vocab = set(tokens)\n"
        "    stoi = dict(zip(vocab, range(len(vocab))))\n"
        "    return stoi, 'the' in vocab, 'a' not in vocab\n"
    )
    fixed, _ = _fix_first(source)
    assert fixed is not None and "dict(zip(sorted(vocab), range(len(vocab))))" in fixed


def test_a_module_with_its_own_sorted_is_refused() -> None:
    source = (
        "from mylib import sorted\n"
        "word_list = list(set(open('t').read().split()))\n"
        "word_dict = {w: i for i, w in enumerate(word_list)}\n"
    )
    fixed, why = _fix_first(source)
    assert fixed is None and why is not None and "its own `sorted`" in why


@pytest.mark.parametrize(
    ("other", "verdict"),
    [
        ([1.0, 0.5, 0.25], (True, "the same 3 losses under PYTHONHASHSEED 0 and 1")),
        ([1.0, 0.7, 0.3], (False, "the fixed script's losses still change with PYTHONHASHSEED")),
        (None, (False, "no losses under a second PYTHONHASHSEED to compare")),
    ],
)
def test_the_symptom_is_the_run_under_another_hash_seed(
    other: list[float] | None, verdict: tuple[bool, str]
) -> None:
    codemod = codemod_for(RULE)
    assert codemod is not None
    signals = RunSignals(other_hash_seed_losses=other)
    after = SmokeRun(ok=True, losses=[1.0, 0.5, 0.25], signals=signals)
    assert codemod.symptom_gone(SmokeRun(ok=True), after) == verdict
