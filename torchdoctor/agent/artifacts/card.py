"""A model card draft (MODEL_CARD.md) filled from what the audit learned: the model and how it
is built, its parameter count (the model is built once in the sandbox to count them), the
data sources and metrics the code names, the open findings, the bias and explainability
results, and what still needs a human. Item 12.3."""

from __future__ import annotations

import ast
import json
import re

from pydantic import BaseModel, ConfigDict, ValidationError

from torchdoctor.agent.artifacts.models import Artifact, CheckOutcome, ModelTarget
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.target import NoTarget
from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.rules.no_model_card import is_model_card
from torchdoctor.agent.escape import md_code, md_text, one_line
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.workspace import Workspace

ITEMS = ["12.3"]
CARD_PATH = "MODEL_CARD.md"
_COUNTER = "_torchdoctor_count_parameters"
_DATA_CALLS = re.compile(
    r"\b(read_csv|read_parquet|read_json|load_dataset|ImageFolder|np\.load|"
    r"datasets\.[A-Z]\w+)\(\s*([\"'][^\"'\n]{1,120}[\"'])?"
)
_METRICS = re.compile(
    r"\b(accuracy|f1_score|f1|precision|recall|roc_auc_score|average_precision_score|"
    r"perplexity|mean_squared_error|mae|bleu|iou|top_?\d+)\b",
    re.IGNORECASE,
)


class _Counted(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: int
    trainable: int


def card_artifact(
    target: ModelTarget | NoTarget,
    workspace: Workspace,
    runner: SandboxedRun,
    findings: list[RawFinding],
    presence: list[Evidence],
) -> Artifact:
    existing = [p for p, text in workspace.documents.items() if is_model_card(p, text)]
    if existing:
        return Artifact(
            kind="card",
            state="not-applicable",
            items=ITEMS,
            reason=f"the project has a model card: {', '.join(existing)}",
        )
    checks: list[CheckOutcome] = []
    counted: _Counted | None = None
    if isinstance(target, ModelTarget):
        counted, check = _count(target, runner)
        checks.append(check)
    text = _render(target, workspace, counted, findings, presence)
    built = "" if counted is None else "; the model built in the sandbox to count parameters"
    return Artifact(
        kind="card",
        state="offered",
        items=ITEMS,
        reason=f"a model card draft filled from the audit{built}",
        path=CARD_PATH,
        content=text,
        checks=checks,
    )


def _count(target: ModelTarget, runner: SandboxedRun) -> tuple[_Counted | None, CheckOutcome]:
    script = (
        "import json\n"
        f"from {target.module} import {target.class_name}\n"
        f"model = {target.constructor}\n"
        "parameters = list(model.parameters())\n"
        "print(json.dumps({'parameters': sum(p.numel() for p in parameters), "
        "'trainable': sum(p.numel() for p in parameters if p.requires_grad)}))\n"
    )
    name = "the model builds and its parameters are counted"
    result = runner.run({f"{_COUNTER}.py": script}, _COUNTER, [])
    if isinstance(result, str):
        return None, CheckOutcome(name=name, passed=False, detail=result)
    lines = result.stdout.strip().splitlines()
    try:
        counted = _Counted.model_validate(json.loads(lines[-1])) if lines else None
    except (ValueError, ValidationError):
        counted = None
    if counted is None:
        tail = one_line((result.stderr or result.stdout)[-300:])
        return None, CheckOutcome(name=name, passed=False, detail=f"{result.outcome}: {tail}")
    return counted, CheckOutcome(name=name, passed=True, detail=f"{counted.parameters:,}")


def _render(
    target: ModelTarget | NoTarget,
    workspace: Workspace,
    counted: _Counted | None,
    findings: list[RawFinding],
    presence: list[Evidence],
) -> str:
    sources = _data_sources(workspace)
    metrics = sorted(
        {m[1].lower() for f in workspace.files for m in _METRICS.finditer(_code_only(f.text))}
    )
    lines = ["# Model card (draft)", ""]
    lines += [
        "Drafted by torchdoctor from an audit of this code. Every line marked **TODO** needs "
        "a person who knows the model; the rest was read from the code and its runs.",
        "",
        "## Model details",
        "",
    ]
    if isinstance(target, ModelTarget):
        lines.append(
            f"- Architecture: {md_code(target.class_name)} ({md_code(target.file)}), built as "
            f"{md_code(target.constructor)}"
        )
        shapes = ", ".join(f"{s.shape} {s.dtype}" for s in target.inputs)
        outputs = ", ".join(f"{s.shape} {s.dtype}" for s in target.outputs)
        lines.append(f"- Inputs observed in {md_code(target.script)}: {shapes}; outputs: {outputs}")
    else:
        lines.append(f"- Architecture: TODO ({md_text(target.reason)})")
    if counted is not None:
        lines.append(f"- Parameters: {counted.parameters:,} ({counted.trainable:,} trainable)")
    lines += ["- Version, authors, license: TODO", ""]
    lines += [
        "## Intended use",
        "",
        "- Primary uses and users: TODO",
        "- Out-of-scope uses: TODO",
        "",
    ]
    lines += ["## Training and evaluation data", ""]
    lines += [f"- {md_code(s)}" for s in sources] or ["- TODO: no data source is named in the code"]
    lines += ["", "## Metrics", ""]
    lines += [f"- {m}" for m in metrics] or ["- TODO: the code computes no named metric"]
    lines += ["- Results: TODO (the audit does not report scores)", ""]
    lines += ["## Bias and explainability", ""]
    for ev in presence:
        items = ev.data.get("items", [])
        if items and items[0] in ("12.1", "12.2"):
            lines.append(f"- {items[0]}: {ev.data.get('verdict')}: {md_text(ev.message)}")
    lines += ["", "## Known issues (open findings of this audit)", ""]
    lines += [
        f"- {md_code(f.rule)} ({f.severity.value}) at {md_code(f'{f.file}:{f.line}')}: "
        f"{md_text(f.message)}"
        for f in sorted(findings, key=lambda f: (-f.severity.rank, f.file, f.line))[:20]
    ] or ["- none found"]
    lines += ["", "## Limitations and ethical considerations", "", "- TODO", ""]
    return "\n".join(lines)


def _code_only(text: str) -> str:
    """Identifiers and strings, not comments (a comment naming a metric computes nothing)."""
    try:
        return ast.unparse(ast.parse(text))
    except (SyntaxError, ValueError, RecursionError):
        return ""


def _data_sources(workspace: Workspace) -> list[str]:
    found: list[str] = []
    for source in workspace.files:
        for match in _DATA_CALLS.finditer(_code_only(source.text)):
            named = one_line(f"{match[1]}({match[2]})" if match[2] else match[1])[:160]
            if named not in found:
                found.append(named)
    return found[:10]
