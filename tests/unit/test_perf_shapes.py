"""The performance codemods (fused optimizers, DataLoader workers and pinning, channels_last,
cudnn.benchmark, CUDA graphs for one-sample inference, the per-step synchronize; and the
missing zero_grad) against shapes seen in public code: each fixture in
tests/fixtures/perf_shapes names its shape in its header (the code is written here). Per rule,
`NAME.RULE.after.py` is the exact fix and `NAME.RULE.reason` a refusal with that reason; the
finding is the rule's own, with the anchors it emits (the other optimizers of the file arrive
as its `related` places)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shape_outcomes import assert_outcome
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.fixes.models import FixTarget
from torchdoctor.agent.models import RELATED_ROLE
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner

SHAPES = Path(__file__).parents[1] / "fixtures" / "perf_shapes"
EVERY_RULE = EngineConfig(select=frozenset({"all"}))  # channels_last and CUDA graphs opt in


def _outcomes() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(SHAPES.iterdir()):
        for kind in ("after.py", "reason"):
            if path.name.endswith(f".{kind}"):
                name, rule = path.name.removesuffix(f".{kind}").split(".")
                found.append((name, rule, kind))
    return found


@pytest.mark.parametrize(
    ("name", "rule", "kind"), [pytest.param(*o, id=f"{o[0]}/{o[1]}") for o in _outcomes()]
)
def test_each_perf_shape_is_fixed_exactly_or_refused_with_its_reason(
    name: str, rule: str, kind: str
) -> None:
    assert_outcome(SHAPES, name, rule, kind, EVERY_RULE)


def test_the_fix_target_reads_the_findings_own_data_not_its_related_places() -> None:
    """A finding shown with related places (the file's other optimizers) gives the codemod its
    own measurement: a related place's `end_line` and role stay with that place."""
    source = (SHAPES / "gan_two_optimizers.py").read_text()
    raw = next(
        f
        for f in analyse_files([("m.py", source)], EVERY_RULE, workers=1).all_findings()
        if f.rule == "unfused-optimizer" and f.data.get("related")
    )
    request = PointRequest(point=rules_by_id()["unfused-optimizer"].point, raw_findings=[raw])
    finding = next(
        f for f in OfflineReasoner().reason(request).findings if f.rule == "unfused-optimizer"
    )
    assert len([e for e in finding.evidence if e.data.get("role") == RELATED_ROLE]) >= 1
    target = FixTarget.from_finding(finding)
    assert target.data == raw.data
    assert target.end_line == raw.end_line


def test_a_conditional_worker_count_is_compared_whole() -> None:
    """workers_by_platform's `0 if os.name == "nt" else 4` is parenthesised before `> 0`
    (unparenthesised, the comparison takes the else branch alone); a plain count is not
    (near miss)."""
    from torchdoctor.agent.fixes.codemods import codemod_for

    source = (SHAPES / "workers_by_platform.py").read_text()
    plain = source.replace('0 if os.name == "nt" else 4', "config.workers")
    assert plain != source
    [finding] = [
        f
        for f in analyse_files([("m.py", plain)], EVERY_RULE, workers=1).all_findings()
        if f.rule == "persistent-workers-off"
    ]
    target = FixTarget(rule=finding.rule, file="m.py", line=finding.line, end_line=finding.line)
    fixed = codemod_for("persistent-workers-off").transform(plain, target)  # type: ignore[union-attr]
    assert fixed is not None and "persistent_workers=config.workers > 0" in fixed


def test_a_keyword_added_to_a_call_written_over_lines_gets_a_line_of_its_own() -> None:
    """Arguments in rows with the closing parenthesis on its own line and no trailing comma
    (microsoft/LoRA's gpt2_ft loaders): the new keyword opens a row of its own, indented like
    the last one; a call on one line (near miss) keeps it on that line."""
    import libcst as cst

    from torchdoctor.agent.fixes.codemods.base import add_keyword

    rows = (
        "DataLoader(\n"
        "    data, batch_size=8, num_workers=0,\n"
        "    shuffle=False, drop_last=True,\n"
        "    sampler=sampler\n"
        ")"
    )
    call = cst.parse_expression(rows)
    assert isinstance(call, cst.Call)
    added = cst.Module([]).code_for_node(add_keyword(call, "persistent_workers", "True"))
    assert added == (
        "DataLoader(\n"
        "    data, batch_size=8, num_workers=0,\n"
        "    shuffle=False, drop_last=True,\n"
        "    sampler=sampler,\n"
        "    persistent_workers=True\n"
        ")"
    )
    inline = cst.parse_expression("DataLoader(data, batch_size=8)")
    assert isinstance(inline, cst.Call)
    assert (
        cst.Module([]).code_for_node(add_keyword(inline, "persistent_workers", "True"))
        == "DataLoader(data, batch_size=8, persistent_workers=True)"
    )


def test_a_network_whose_output_is_moved_is_still_put_in_eval_mode() -> None:
    """Near miss of model_built_from_name: the name called is the network itself and what it
    returns is a tensor moved to the CPU (`out.to("cpu")`, no module method): `.eval()` goes
    before the forward."""
    from torchdoctor.agent.fixes.codemods import codemod_for

    source = (SHAPES / "model_built_from_name.py").read_text()
    network = (
        source.replace("    model_fn = eval(args.model)\n", "")
        .replace(
            "    model = model_fn(resolution=args.resolution)\n",
            '    model = torch.load(args.ckpt, map_location="cpu", weights_only=False)\n',
        )
        .replace(
            '    model.load_state_dict(torch.load(args.ckpt, map_location="cpu", '
            "weights_only=True))\n    model.eval()\n",
            "",
        )
        .replace(
            '    torch.onnx.export(model, dummy_input, args.model + ".onnx")\n',
            '    out = model(dummy_input)\n    out = out.to("cpu")\n    print(out.shape)\n',
        )
    )
    assert "model.eval()" not in network and "out = model(dummy_input)" in network
    [finding] = [
        f
        for f in analyse_files([("m.py", network)], EVERY_RULE, workers=1).all_findings()
        if f.rule == "inference-no-eval"
    ]
    codemod = codemod_for("inference-no-eval")
    assert codemod is not None
    target = FixTarget(
        rule=finding.rule,
        file="m.py",
        line=finding.line,
        end_line=finding.end_line,
        data=finding.data,
    )
    fixed = codemod.transform(network, target)
    assert fixed is not None and "    model.eval()\n    out = model(dummy_input)" in fixed


def test_a_constructor_looked_up_by_name_gets_no_eval_call() -> None:
    """model_built_from_name (EfficientFormer's toolbox): the rule no longer reports the
    constructor's call; handed a finding there anyway (an older report, another rule's
    anchor), the codemod refuses to write `model_fn.eval()` on a function."""
    from torchdoctor.agent.fixes.codemods import codemod_for

    source = (SHAPES / "model_built_from_name.py").read_text()
    assert not [
        f
        for f in analyse_files([("m.py", source)], EVERY_RULE, workers=1).all_findings()
        if f.rule == "inference-no-eval"
    ]
    line = source.splitlines().index("    model = model_fn(resolution=args.resolution)") + 1
    target = FixTarget(
        rule="inference-no-eval", file="m.py", line=line, end_line=line, data={"model": "model_fn"}
    )
    codemod = codemod_for("inference-no-eval")
    assert codemod is not None
    assert codemod.transform(source, target) is None
    reason = codemod.explain(source, target) or ""
    assert "`model_fn` is its constructor" in reason
