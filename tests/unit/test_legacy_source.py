"""Python 2 modules (and `cuda(async=True)`) read as Python 3, line for line, so the rules see
the training loops of PyTorch 0.3/0.4-era research code instead of a syntax error alone."""

from __future__ import annotations

import ast

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.legacy_source import as_python3

PYTHON2 = """import sys
def report(x, log):
    print "loss", x
    print
    print >>sys.stderr, "epoch", x,
    print >>log
    print x,   # same line
    print("already a call")
    if x: print x; y = 1
    print ("a %d" %
           x)
    try:
        pass
    except IOError, e:
        raise ValueError, "bad"
    z = x.cuda(async=True)
    print = log.info
"""


def test_python2_statements_are_rewritten_without_moving_a_line() -> None:
    rewritten = as_python3(PYTHON2)
    assert rewritten is not None
    ast.parse(rewritten)
    old, new = PYTHON2.splitlines(), rewritten.splitlines()
    assert len(old) == len(new)
    changed = {
        n + 1: line.strip()
        for n, (was, line) in enumerate(zip(old, new, strict=True))
        if was != line
    }
    assert changed == {
        3: 'print("loss", x)',
        4: "print()",
        5: 'print("epoch", x, file=sys.stderr, end=" ")',
        6: "print(file=log)",
        7: 'print(x, end=" ")',
        9: "if x: print(x); y = 1",
        14: "except IOError as e:",
        15: 'raise ValueError("bad")',
        16: "z = x.cuda(non_blocking=True)",
    }


def test_python3_source_and_typos_are_not_rewritten() -> None:
    assert as_python3("print('x')\nprint = 3\n") is None
    assert as_python3("def f(:\n    pass\n") is None


def test_the_rules_read_a_python2_training_loop_and_the_syntax_error_stays() -> None:
    source = (
        "import torch\n"
        "def train(model, loader, optimizer, clip):\n"
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        loss = torch.nn.functional.mse_loss(model(x), y)\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
        "        torch.nn.utils.clip_grad_norm(model.parameters(), clip)\n"
        "        print 'loss', loss.item()\n"
    )
    findings = {(f.rule, f.line) for f in analyse_files([("train.py", source)]).all_findings()}
    assert ("syntax-error", 9) in findings
    assert ("clip-grad-order", 8) in findings


def test_a_module_that_is_not_python2_keeps_its_syntax_error_alone() -> None:
    source = "import torch\nprint 'x'\ndef f(:\n    pass\n"
    findings = analyse_files([("bad.py", source)]).all_findings()
    assert [f.rule for f in findings] == ["syntax-error"]


TABS = (
    "import torch\n"
    "import torch.nn.functional as F\n"
    "class Agent:\n"
    "    def __init__(self, model):\n"
    "        self.model = model\n"
    "\tself.model.train()\n"  # Python 2: a tab is the next multiple of 8 columns
    "    def act(self, state):\n"
    "        text = '''\n"
    "\tkept'''\n"
    "        return F.softmax(self.model(state))\n"
)


def test_indentation_mixing_tabs_and_spaces_is_read_as_python2_read_it() -> None:
    """Held-out pytorch-REINFORCE: every module indents some lines with a tab among lines of
    eight spaces, a TabError in Python 3; no rule saw its policy or its update."""
    rewritten = as_python3(TABS)
    assert rewritten is not None
    ast.parse(rewritten)
    lines = rewritten.splitlines()
    assert len(lines) == len(TABS.splitlines())
    assert lines[5] == "        self.model.train()"
    assert lines[8] == "\tkept'''"  # a string's own text
    findings = {(f.rule, f.line) for f in analyse_files([("agent.py", TABS)]).all_findings()}
    assert ("syntax-error", 6) in findings
    assert ("softmax-without-dim", 10) in findings


def test_consistent_tab_indentation_is_not_rewritten() -> None:
    assert as_python3("def f():\n\tif True:\n\t\treturn 1\n") is None
