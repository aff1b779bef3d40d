"""The static engine: one parse, one walk, rules by node type; bad files never stop the rest."""

from __future__ import annotations

import ast
import gc
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from tests.rule_fixtures import expected_lines, load_case
from torchdoctor.agent.checks.base import EngineConfig, ModuleContext, Rule
from torchdoctor.agent.checks.engine import _walk, analyse_files, analyse_source
from torchdoctor.agent.checks.module_text import ModuleText, may_name
from torchdoctor.agent.checks.registry import enabled_rules
from torchdoctor.agent.models import Severity

GOOD = "import torch\nx = torch.zeros(3)\n"


def test_syntax_error_becomes_a_finding_and_other_files_still_run() -> None:
    result = analyse_files([("bad.py", "def f(:\n    pass\n"), ("good.py", GOOD)])
    bad = next(r for r in result.files if r.path == "bad.py")
    assert [f.rule for f in bad.findings] == ["syntax-error"]
    assert "SyntaxError" in bad.findings[0].message
    assert next(r for r in result.files if r.path == "good.py").note is None


def test_a_pre_python_3_7_cuda_call_is_told_its_new_argument_name() -> None:
    """`.cuda(async=True)` (PyTorch 0.3 repositories) stops parsing at `async`, a keyword
    since Python 3.7; the finding names the argument that replaced it."""
    source = "import torch\ny = x.cuda(async=True)\nz = x.cuda(non_blocking=True)\n"
    (finding,) = analyse_files([("old.py", source)]).all_findings()
    assert finding.rule == "syntax-error" and finding.line == 2
    assert finding.message.endswith("renamed the argument `non_blocking=True`")
    (plain,) = analyse_files([("bad.py", "def f(:\n    pass\n")]).all_findings()
    assert "non_blocking" not in plain.message


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="this Python parses PEP 695 syntax")
def test_python_3_12_type_parameters_are_a_note_not_a_syntax_error() -> None:
    """lerobot (requires Python >= 3.12) writes `type` aliases and generic classes: valid code
    this interpreter cannot parse, so a note says the file was not audited. A syntax error
    on any other line (here beside a variable named `type`) is still one."""
    newer = {
        "aliases.py": "from typing import Any\ntype FeatureDict = dict[str, Any]\n",
        "generic.py": "class Backtrackable[T]:\n    pass\n",
        "function.py": "def load[T: dict](path: str, obj: T) -> T:\n    return obj\n",
    }
    result = analyse_files(list(newer.items()))
    assert not result.all_findings()
    for r in result.files:
        assert r.note is not None and "Python 3.12" in r.note, r.path
    typo = "type = 3\ndef f(:\n    pass\n"
    (finding,) = analyse_files([("typo.py", typo)]).all_findings()
    assert finding.rule == "syntax-error" and finding.line == 2


def test_deadline_stops_a_pathological_file_with_a_note() -> None:
    huge = "x = [" + ",".join(["1"] * 200_000) + "]\n"
    result = analyse_source("huge.py", huge, enabled_rules(), EngineConfig(file_deadline_s=0.0))
    assert result.note is not None and "deadline" in result.note


class _SlowFinish(Rule):
    id = "slow-finish"
    point = 1
    severity = Severity.LOW
    title = "takes its time in finish()"
    items = ("1.1",)
    finished: ClassVar[list[str]] = []

    def finish(self, ctx: ModuleContext) -> None:
        self.finished.append(self.id)
        busy_until = time.thread_time() + 0.2  # the deadline counts CPU time, not sleep
        while time.thread_time() < busy_until:
            pass


class _LaterRule(_SlowFinish):
    id = "later-rule"


def test_deadline_is_checked_between_rules_finish_phases() -> None:
    _SlowFinish.finished.clear()
    config = EngineConfig(file_deadline_s=0.1)
    result = analyse_source("m.py", GOOD, (_SlowFinish, _LaterRule), config)
    assert result.note is not None and "deadline" in result.note
    assert _SlowFinish.finished == ["slow-finish"]


def test_walk_indexes_nodes_by_type_in_parent_map_order() -> None:
    source = "import torch\ndef f(a, b):\n    return torch.add(a + b, -a) if a < b else [a, b]\n"
    ctx = ModuleContext(path="m.py", source=source, tree=ast.parse(source))
    _walk(ctx, {}, float("inf"), [], {})
    expected: dict[type[ast.AST], list[ast.AST]] = {}
    for node in ctx.parents:
        expected.setdefault(type(node), []).append(node)
    assert ctx.by_type == expected
    assert all(
        ctx.parents[child] is node
        for node in ast.walk(ctx.tree)
        for child in ast.iter_child_nodes(node)
        if child._fields
    )
    shared = {ast.Load, ast.Add, ast.USub, ast.Lt}  # the parser's singletons: not recorded
    assert set(ctx.parents) == {
        c for n in ast.walk(ctx.tree) for c in ast.iter_child_nodes(n) if type(c) not in shared
    }
    assert "torch" in ctx.imports.aliases


class _EarlyQuestion(Rule):
    """Asks the module's def-use about a name at the first statement it visits."""

    id = "early-question"
    point = 1
    severity = Severity.LOW
    title = "asks def-use during the dispatch"
    items = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Assign,)
    answers: ClassVar[list[list[str]]] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        if not self.answers:
            read = ast.Name(id="total", ctx=ast.Load())
            ctx.parents[read] = ctx.tree
            self.answers.append([ast.unparse(v) for v in ctx.flow.definitions(read)])


def test_visits_see_module_analyses_built_from_the_whole_module() -> None:
    # a visit at the top of a module once froze def-use on the part walked so far: later
    # functions' bindings were missing for every rule after it (a module-level
    # `model.embedding.weight.data = vectors` hid a training loop's loss from its rules)
    _EarlyQuestion.answers.clear()
    source = "model = 1\ntotal = 0\nif model:\n    total = 2\n"
    analyse_source("m.py", source, (_EarlyQuestion,), EngineConfig())
    assert _EarlyQuestion.answers == [["0", "2"]]
    script = (
        "import torch\n\nmodel.embedding.weight.data = vectors\n\n"
        "def train(loader, model, criterion, optimizer):\n    losses = []\n"
        "    for x, y in loader:\n        loss = criterion(model(x), y)\n"
        "        optimizer.zero_grad()\n        loss.backward()\n        optimizer.step()\n"
        "        losses.append(loss)\n    return losses\n"
    )
    found = analyse_source("train.py", script, enabled_rules(), EngineConfig()).findings
    assert {(f.rule, f.line) for f in found} >= {
        ("data-attribute-idiom", 3),
        ("loss-graph-accumulation", 12),
    }


def test_analysis_leaves_the_garbage_collector_as_it_found_it() -> None:
    analyse_source("m.py", GOOD, enabled_rules(), EngineConfig())
    assert gc.isenabled()
    gc.disable()
    try:
        analyse_source("m.py", GOOD, enabled_rules(), EngineConfig())
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_deeply_nested_expression_is_a_note_not_a_crash() -> None:
    nested = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\n"
    result = analyse_source("nested.py", nested, enabled_rules(), EngineConfig())
    assert result.note is not None or result.findings


def test_inline_suppression() -> None:
    source = (
        "def train(model, loader, opt):\n"
        "    for x in loader:  # torchdoctor: ignore[zero-grad-missing]\n"
        "        model(x).sum().backward()\n"
        "        opt.step()\n"
    )
    result = analyse_files([("t.py", source)])
    assert not [f for f in result.all_findings() if f.rule == "zero-grad-missing"]


def test_parallel_and_sequential_passes_agree() -> None:
    files = [
        (
            f"m{i}.py",
            GOOD + f"def f{i}(model, loader, opt):\n    for x in loader:\n"
            "        model(x).sum().backward()\n        opt.step()\n",
        )
        for i in range(30)
    ]
    sequential = analyse_files(files, workers=1)
    parallel = analyse_files(files, workers=2)
    key = lambda r: sorted((f.file, f.line, f.rule) for f in r.all_findings())  # noqa: E731
    assert key(sequential) == key(parallel)
    assert len(key(sequential)) >= 30


RULE_FIXTURES = Path(__file__).parents[1] / "fixtures" / "rules"


GENERATED_LOOP = (
    "import torch.nn.functional as F\n\n\n"
    "def fit(model, loader):\n    running = 0.0\n    for batch in loader:\n        "
)
TERMS = 1500  # past Python's recursion limit, which used to drop the whole file


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        pytest.param(
            "loss = "
            + " + ".join(["F.mse_loss(model(batch), batch)"] * TERMS)
            + "\n        loss.backward()\n        running += loss\n",
            "loss-graph-accumulation",
            id="long-sum",
        ),
        pytest.param(
            "out = " + " * ".join(["model(batch)"] * TERMS) + "\n        running += out\n",
            "outputs-stored-with-grad",
            id="long-product",
        ),
    ],
)
def test_a_long_generated_expression_is_analysed_not_dropped(body: str, rule: str) -> None:
    source = GENERATED_LOOP + body
    result = analyse_source("generated.py", source, enabled_rules(), EngineConfig())
    assert result.note is None
    assert rule in {f.rule for f in result.findings}


def test_a_helper_that_unpacks_its_own_result_leaves_the_file_analysed() -> None:
    """torch's `_get_bool_depth` shape: the graph analysis once chased the helper's tuple
    for ever, and every rule lost the file."""
    rule = "loss-graph-accumulation"
    case = RULE_FIXTURES / rule / "positive_loss_beside_a_helper_that_unpacks_its_own_result.py"
    files = load_case(case)
    result = analyse_source(case.name, files[0][1], enabled_rules(), EngineConfig())
    assert result.note is None
    reported = {(f.file, f.line) for f in result.findings if f.rule == rule}
    assert reported == expected_lines(files, rule)


def test_calls_routed_by_callee_name_find_what_every_call_finds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rule's `call_names` only spares it calls its visit ignores: on its own fixtures,
    sending it every call finds the same (a visit that starts reading other callees must
    widen its names)."""
    routed = [rule for rule in enabled_rules() if rule.call_names]
    assert routed
    for rule in routed:
        sources = sorted((RULE_FIXTURES / rule.id).glob("*.py"))
        found: dict[bool, list[tuple[str, int, str]]] = {}
        for every_call in (False, True):
            if every_call:
                monkeypatch.setattr(rule, "call_names", frozenset())
            found[every_call] = [
                (f.file, f.line, f.message)
                for path in sources
                for f in analyse_source(
                    path.name, path.read_text(encoding="utf-8"), (rule,), EngineConfig()
                ).findings
            ]
        assert found[False] and found[False] == found[True], rule.id


def test_module_text_answers_like_the_source() -> None:
    source = "import torch\nLoss = torch.nn.MSELoss()  # é_quantized\udc80x\ty = f(a)[:, 0]\n"
    text = ModuleText(source)
    tokens = ["torch", "MSELoss", "backward", "", "\n", "nn.M", "quantiz", "rch.n", "f(a)"]
    tokens += ["f(b)", "a)[:", ":]", "= torch.nn", "torch.optim", "_quantized", "é", "x", "\ty"]
    tokens += [source[i:j] for i in range(0, len(source), 3) for j in range(i, len(source), 5)]
    for token in tokens:
        assert (token in text) is (token in source), token
        assert (token in text) is (token in source), token  # the remembered answer
    assert text.lower() == source.lower()
    assert text == source and text.splitlines() == source.splitlines()
    with pytest.raises(TypeError):
        _ = 1 in text  # type: ignore[operator]


def test_lowered_module_text_answers_like_the_lowered_source() -> None:
    """`lower()` is indexed too: an ASCII text's from its own words lower-cased, a text with
    other characters from its own lower-casing (the Kelvin sign lower-cases to `k`)."""
    for source in ("import torch\nEMA = Target(Net)  # Polyak\n", "EMA = \u212aelvin(Net)\n"):
        text = ModuleText(source)
        lowered = text.lower()
        assert isinstance(lowered, ModuleText) and lowered == source.lower()
        for token in ["ema", "EMA", "polyak", "target(", "kelvin", "elvin", "net)", "torch"]:
            assert (token in lowered) is (token in source.lower()), token
        assert lowered.has_word("ema") and not lowered.has_word("em")


def test_may_name_finds_whole_words_only_in_ascii_text() -> None:
    source = "def evaluate(model):\n    model.training = True  # constraint\n    model.eval()\n"
    for text in (ModuleText(source), source):
        assert may_name(text, "eval") and may_name(text, "training")
        assert not may_name(text, "train") and not may_name(text, "evaluat")
    wide = "ｍodel.ｅval()  # evaluation\n"  # the parser reads `model.eval()` (NFKC)
    assert may_name(ModuleText(wide), "eval") is ("eval" in wide)


class _BrokenVisit(Rule):
    id = "broken-visit"
    point = 1
    severity = Severity.LOW
    title = "raises on the first call it visits"
    items = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"backward"})

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        ctx.report(self, node, "reported before it broke")
        raise KeyError("some odd shape of the audited code")


class _BrokenFinish(Rule):
    id = "broken-finish"
    point = 1
    severity = Severity.LOW
    title = "raises in finish()"
    items = ("1.1",)

    def finish(self, ctx: ModuleContext) -> None:
        raise AttributeError("'NoneType' object has no attribute 'lineno'")


def test_a_rule_that_raises_costs_that_rule_only_and_is_said() -> None:
    """A rule's defect met on code nobody wrote a fixture for must not take the audit down:
    the other rules' findings stay, the broken rules' own are left out, the note names them."""
    source = (
        "import torch\n\n\n"
        "def train(model, loader, optimizer, criterion):\n"
        "    for x, y in loader:\n"
        "        loss = criterion(model(x), y)\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
    )
    real = enabled_rules(frozenset({"zero-grad-missing"}))
    real = tuple(r for r in real if r.id == "zero-grad-missing")
    result = analyse_source("m.py", source, (_BrokenVisit, *real, _BrokenFinish), EngineConfig())
    assert [f.rule for f in result.findings] == ["zero-grad-missing"]
    assert result.note is not None
    assert "rule broken-visit failed here (KeyError" in result.note
    assert "rule broken-finish failed here (AttributeError" in result.note
    assert "broken-visit" not in result.applicable and "zero-grad-missing" in result.applicable
