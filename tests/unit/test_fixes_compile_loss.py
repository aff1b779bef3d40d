"""no-torch-compile compiles the loss the loop computes outside the model, in the shapes
training loops are written in: a functional loss bound to a local name, a loss module compiled
in place, and the cases left eager (the name is taken, the loss module is rebound, the loss is
computed inside the model's forward)."""

from __future__ import annotations

import ast
import textwrap

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget


def _fix(source: str) -> str:
    source = textwrap.dedent(source)
    line = next(
        i + 1 for i, text in enumerate(source.splitlines()) if text.lstrip().startswith("for ")
    )
    codemod = codemod_for("no-torch-compile")
    assert codemod is not None
    fixed = codemod.transform(
        source, FixTarget(rule="no-torch-compile", file="t.py", line=line, end_line=line)
    )
    assert fixed is not None
    ast.parse(fixed)
    return fixed


FUNCTIONAL = """\
    import torch
    import torch.nn.functional as F

    model = torch.nn.Linear(8, 50).cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    for step in range(10):
        x = torch.randn(4, 8, device="cuda")
        y = torch.randint(50, (4,), device="cuda")
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
"""


def test_a_functional_loss_is_bound_to_a_name_and_compiled_on_cuda() -> None:
    fixed = _fix(FUNCTIONAL)
    assert (
        "cross_entropy = F.cross_entropy\n"
        "if torch.cuda.is_available():\n"
        "    model.compile()\n"
        "    cross_entropy = torch.compile(cross_entropy)\n"
        "for step in range(10):\n"
    ) in fixed
    assert (
        "loss = cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)"
        in fixed
    )
    assert "F.cross_entropy(" not in fixed.split("for step", 1)[1]


def test_a_fully_qualified_functional_loss_in_a_function() -> None:
    fixed = _fix("""\
        import torch


        def train(model, loader, optimizer):
            for inputs, targets in loader:
                loss = torch.nn.functional.mse_loss(model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    """)
    assert (
        "    mse_loss = torch.nn.functional.mse_loss\n"
        "    if torch.cuda.is_available():\n"
        "        model.compile()\n"
        "        mse_loss = torch.compile(mse_loss)\n"
    ) in fixed
    assert "loss = mse_loss(model(inputs), targets)" in fixed


def test_a_loss_module_is_compiled_in_place() -> None:
    fixed = _fix("""\
        import torch
        from torch import nn

        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).cuda()
        criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        for epoch in range(3):
            for images, labels in loader:
                optimizer.zero_grad()
                outputs = net(images.cuda())
                loss = criterion(outputs, labels.cuda())
                loss.backward()
                optimizer.step()
    """)
    assert (
        "if torch.cuda.is_available():\n"
        "    net.compile()\n"
        "    criterion.compile()\n"
        "for epoch in range(3):\n"
    ) in fixed
    assert "loss = criterion(outputs, labels.cuda())" in fixed


def test_a_taken_name_leaves_that_loss_eager() -> None:
    # `cross_entropy` already names something of the user's: no shadowing, the model alone
    taken = FUNCTIONAL.replace("    model = ", "    cross_entropy = []\n    model = ")
    fixed = _fix(taken)
    assert "if torch.cuda.is_available():\n    model.compile()\nfor step" in fixed
    assert "loss = F.cross_entropy(" in fixed


def test_a_rebound_loss_module_is_not_compiled() -> None:
    fixed = _fix("""\
        import torch
        from torch import nn

        model = nn.Linear(4, 1).cuda()
        criterion = nn.MSELoss()
        if use_l1:
            criterion = make_l1()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for x, y in loader:
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """)
    assert "criterion.compile()" not in fixed
    assert "    model.compile()\nfor x, y in loader:" in fixed


def test_a_loss_inside_the_models_forward_needs_nothing_more() -> None:
    # nanoGPT's shape: the model returns the loss, so compiling the model compiles it
    fixed = _fix("""\
        import torch

        model = GPT(config).to("cuda")
        optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cuda")
        for it in range(max_iters):
            logits, loss = model(X, Y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    """)
    assert (
        "if torch.cuda.is_available():\n    model.compile()\nfor it in range(max_iters):" in fixed
    )
