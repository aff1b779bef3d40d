"""The in-place-result-assigned codemod on each shape the rule reports, fixed until the rule is
quiet, and the fixed module run: the name holds the object again."""

from __future__ import annotations

import random

import pytest
import torch

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

RULE = "in-place-result-assigned"

CASES = {
    "same-name": (
        "import torch\n"
        "def load(model, sd):\n"
        "    model = model.load_state_dict(sd)\n"
        "    return model\n",
        "import torch\ndef load(model, sd):\n    model.load_state_dict(sd)\n    return model\n",
    ),
    "built-receiver": (
        "import torch\n"
        "def load(sd):\n"
        "    net = torch.nn.Linear(2, 2).load_state_dict(sd)\n"
        "    return net\n",
        "import torch\n"
        "def load(sd):\n"
        "    net = torch.nn.Linear(2, 2)\n"
        "    net.load_state_dict(sd)\n"
        "    return net\n",
    ),
    "other-name": (
        "import torch\n"
        "def load(model, sd):\n"
        "    loaded = model.load_state_dict(sd)\n"
        "    loaded.eval()\n"
        "    return loaded\n",
        "import torch\n"
        "def load(model, sd):\n"
        "    model.load_state_dict(sd)\n"
        "    loaded = model\n"
        "    loaded.eval()\n"
        "    return loaded\n",
    ),
    "shuffle": (
        "import random\n"
        "def order(n):\n"
        "    items = list(range(n))\n"
        "    items = random.shuffle(items)\n"
        "    return items\n",
        "import random\n"
        "def order(n):\n"
        "    items = list(range(n))\n"
        "    random.shuffle(items)\n"
        "    return items\n",
    ),
}


def _fixed(source: str) -> str:
    codemod = codemod_for(RULE)
    assert codemod is not None
    for _ in range(3):
        found = [
            f for f in analyse_files([("m.py", source)], workers=1).all_findings() if f.rule == RULE
        ]
        if not found:
            return source
        target = FixTarget(
            rule=RULE, file="m.py", line=found[0].line, end_line=found[0].end_line,
            data=found[0].data,
        )  # fmt: skip
        fixed = codemod.transform(source, target)
        assert fixed is not None, f"no fix for line {found[0].line}"
        source = fixed
    raise AssertionError("the rule still reports after three fixes")


@pytest.mark.parametrize("case", sorted(CASES))
def test_fix_keeps_the_object_under_its_name(case: str) -> None:
    before, after = CASES[case]
    assert _fixed(before) == after


def test_fixed_loaders_return_the_module() -> None:
    source = torch.nn.Linear(2, 2).state_dict()
    for case in ("same-name", "built-receiver", "other-name"):
        namespace: dict[str, object] = {}
        exec(compile(_fixed(CASES[case][0]), "m.py", "exec"), namespace)
        load = namespace["load"]
        model = load(source) if case == "built-receiver" else load(torch.nn.Linear(2, 2), source)  # type: ignore[operator]
        assert isinstance(model, torch.nn.Linear)
        assert torch.equal(model.weight, source["weight"])


def test_fixed_shuffle_returns_the_items() -> None:
    namespace: dict[str, object] = {}
    exec(compile(_fixed(CASES["shuffle"][0]), "m.py", "exec"), namespace)
    random.seed(0)
    assert sorted(namespace["order"](5)) == [0, 1, 2, 3, 4]  # type: ignore[operator]


def test_a_loader_given_a_built_object_is_left_to_a_human() -> None:
    source = (
        "from peft import set_peft_model_state_dict\n"
        "from model import Net\n"
        "def load(w):\n"
        "    model = set_peft_model_state_dict(Net(), w)\n"
        "    model.eval()\n"
        "    return model\n"
    )
    target = FixTarget(rule=RULE, file="m.py", line=4, end_line=4, data={"object": "argument"})
    codemod = codemod_for(RULE)
    assert codemod is not None
    assert codemod.transform(source, target) is None
