"""softmax-without-dim's codemod writes out the dim PyTorch picks today where the input's rank
is known, and says why it refuses elsewhere (shapes of public training code, written here:
pytorch/examples' 2017 MNIST net, a flatten-then-linear classifier fed to `nll_loss`, a
seq2seq attention over (steps, batch, hidden) energies, a batch straight from a loader,
the char-RNN tutorial's `nn.LogSoftmax()`)."""

from __future__ import annotations

import ast
import importlib.util
import warnings
from pathlib import Path

import pytest

from torchdoctor.agent.checks.analysis.tensor_rank import tensor_rank
from torchdoctor.agent.checks.base import EngineConfig, ModuleContext
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.rules.softmax_without_dim import implicit_softmax_dim
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n"

FLATTEN_THEN_LINEAR = (
    HEADER
    + """
class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, images):
        return self.body(images)


def train(loader, optimizer):
    model = Classifier()
    for images, labels in loader:
        output = model(images)
        loss = F.nll_loss(F.log_softmax(output), labels)
        loss.backward()
        optimizer.step()
"""
)

# pytorch-beginner's feed-forward net (2017): Linear layers ending in a log_softmax with no
# dim, its output fed to nll_loss by the training loop
LINEAR_LOGITS_INTO_NLL = (
    HEADER
    + """
class Neuralnetwork(nn.Module):
    def __init__(self, in_dim, hidden, out_dim):
        super().__init__()
        self.layer1 = nn.Linear(in_dim, hidden)
        self.layer2 = nn.Linear(hidden, out_dim)

    def forward(self, x):
        x = self.layer1(x)
        x = self.layer2(x)
        return F.log_softmax(x)


model = Neuralnetwork(28 * 28, 300, 10)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for img, label in train_loader:
    loss = F.nll_loss(model(img), label)
    loss.backward()
    optimizer.step()
"""
)

# near misses: a decoder handed in (not known to be a Linear), and Linear logits sampled from
# rather than read by a loss
NOT_KNOWN_AS_CLASS_LOGITS = (
    HEADER
    + """
proj = nn.Linear(8, 4)


def decode(decoder, hidden, targets):
    return F.nll_loss(F.log_softmax(decoder(hidden)), targets)


def sample(hidden):
    return torch.multinomial(F.log_softmax(proj(hidden)).exp(), 1)
"""
)

TWO_ON_ONE_LINE = (
    HEADER
    + """
def scores(hidden, weights):
    flat = hidden.flatten(1)
    return F.log_softmax(F.softmax(weights), dim=1), F.softmax(flat)
"""
)

ATTENTION_OVER_STEPS = (
    HEADER
    + """
def attend(encoder_outputs, hidden):
    energies = torch.zeros(encoder_outputs.size(0), hidden.size(0), hidden.size(1))
    return F.softmax(energies)
"""
)

LOADER_BATCH = (
    HEADER
    + """
def evaluate(model, loader):
    for inputs, _ in loader:
        yield F.softmax(inputs)
"""
)

SOFTMAX_MODULE = (
    HEADER
    + """
class CharRNN(nn.Module):
    def __init__(self, size, classes):
        super().__init__()
        self.i2o = nn.Linear(size, classes)
        self.softmax = nn.LogSoftmax()

    def forward(self, combined):
        return self.softmax(self.i2o(combined))
"""
)

# the same module applied to a Linear's logits that an NLLLoss reads: its one application is
# 2-D, so the dim goes where the module is built
SOFTMAX_MODULE_INTO_NLL = (
    SOFTMAX_MODULE
    + """

net = CharRNN(20, 4)
nll = nn.NLLLoss()


def step(x, y):
    return nll(net(x), y)
"""
)


def _outcomes(source: str) -> list[tuple[int, str | None, str | None]]:
    """(line, fixed line or None, refusal) for each finding of the rule."""
    config = EngineConfig(select=frozenset({"softmax-without-dim"}))
    codemod = codemod_for("softmax-without-dim")
    assert codemod is not None
    outcomes = []
    for finding in analyse_files([("m.py", source)], config, workers=1).all_findings():
        if finding.rule != "softmax-without-dim":
            continue
        target = FixTarget(
            rule=finding.rule,
            file="m.py",
            line=finding.line,
            end_line=finding.end_line,
            data=finding.data,
        )
        fixed = codemod.transform(source, target)
        line = fixed.splitlines()[finding.line - 1].strip() if fixed else None
        outcomes.append((finding.line, line, codemod.explain(source, target)))
    return outcomes


def test_a_model_output_of_flattened_logits_gets_dim_1_before_its_loss() -> None:
    ((_, fixed, _),) = _outcomes(FLATTEN_THEN_LINEAR)
    assert fixed == "loss = F.nll_loss(F.log_softmax(output, dim=1), labels)"


def test_linear_logits_an_nll_loss_reads_are_two_dimensional() -> None:
    ((_, fixed, _),) = _outcomes(LINEAR_LOGITS_INTO_NLL)
    assert fixed == "return F.log_softmax(x, dim=1)"


def test_logits_not_known_as_a_linears_read_by_a_loss_are_refused() -> None:
    outcomes = _outcomes(NOT_KNOWN_AS_CLASS_LOGITS)
    assert len(outcomes) == 2
    assert all(fixed is None and "rank is not known" in (why or "") for _, fixed, why in outcomes)


def test_a_softmax_module_applied_to_two_dimensional_logits_gets_its_dim_where_built() -> None:
    ((_, fixed, _),) = _outcomes(SOFTMAX_MODULE_INTO_NLL)
    assert fixed == "self.softmax = nn.LogSoftmax(dim=1)"


def test_each_softmax_of_a_line_is_fixed_by_its_own_input() -> None:
    fixed = sorted((line or "", refusal or "") for _, line, refusal in _outcomes(TWO_ON_ONE_LINE))
    assert fixed[0][0] == "" and "rank is not known" in fixed[0][1]  # F.softmax(weights)
    assert fixed[1] == (
        "return F.log_softmax(F.softmax(weights), dim=1), F.softmax(flat, dim=1)",
        "",
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (ATTENTION_OVER_STEPS, "the input is 3-D"),
        (LOADER_BATCH, "rank is not known"),
        (SOFTMAX_MODULE, "applied here to inputs of unknown or differing rank"),
    ],
)
def test_the_codemod_refuses_where_the_dim_it_would_write_is_not_safe(
    source: str, reason: str
) -> None:
    ((_, fixed, refusal),) = _outcomes(source)
    assert fixed is None and refusal is not None and reason in refusal


def test_the_implicit_rule_is_torchs() -> None:
    """Against the installed torch's own `_get_softmax_dim`, read from its source (importing
    torch would cost this test seconds)."""
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None
    source = (Path(spec.origin).parent / "nn" / "functional.py").read_text()
    (rule,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef) and node.name == "_get_softmax_dim"
    ]
    namespace: dict[str, object] = {"warnings": warnings}
    exec(compile(ast.Module(body=[rule], type_ignores=[]), "functional.py", "exec"), namespace)
    picked = namespace["_get_softmax_dim"]
    assert callable(picked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rank in range(6):
            assert implicit_softmax_dim(rank) == picked("softmax", rank, 3)


@pytest.mark.parametrize(
    ("expr", "rank"),
    [
        ("x.view(-1, 320)", 2),
        ("x.view(b, c, -1)", 3),
        ("x.view(*shape)", None),
        ("x.view(shape)", None),
        ("torch.flatten(x, 1)", 2),
        ("F.relu(torch.zeros(4, 5)).float() * 0.5", 2),
        ("torch.randn(2, 3, 4)[:, -1]", 2),
        ("torch.randn(2, 3, 4)[mask]", None),
        ("x", None),
    ],
)
def test_tensor_rank_follows_what_fixes_it(expr: str, rank: int | None) -> None:
    source = f"{HEADER}def f(x, b, c, shape, mask):\n    return {expr}\n"
    tree = ast.parse(source)
    ctx = ModuleContext(path="m.py", source=source, tree=tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            ctx.imports.add(node)
        for child in ast.iter_child_nodes(node):
            ctx.parents[child] = node
    returned = next(n for n in ast.walk(tree) if isinstance(n, ast.Return))
    assert returned.value is not None
    assert tensor_rank(ctx, returned.value) == rank
