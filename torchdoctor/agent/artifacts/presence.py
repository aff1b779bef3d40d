"""What the code already has for the checklist items no rule decides alone: tensor-shape
annotations (1.2), input checks (2.1), drift monitoring (5.4), an inference compiler (7.3),
per-group metrics (12.1) and attributions (12.2); the paper or method reference 3.2 would
compare the code with (a reviewer's call either way). Present: the item passes, saying where.
Absent: the item stays not-checked with a reason that names what is missing and which
artifact or option supplies it; never the bare "no check covers this item"."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass

from torchdoctor import __version__
from torchdoctor.agent.checklist import ITEMS_BY_ID
from torchdoctor.agent.models import Evidence, Verdict
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace

SOURCE = "torchdoctor-presence"
_SENSITIVE = re.compile(
    r"""["'](gender|sex|race|ethnicity|religion|age|age_group|disability|nationality|"""
    r"""sensitive_attribute|group)["']""",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Presence:
    item: str
    words: re.Pattern[str]
    present: str
    """Said when found, with the files: "{files}" is replaced."""
    absent: str


_PRESENCES = (
    Presence(
        "1.2",
        re.compile(r"\b(jaxtyping|torchtyping|tensor_annotations)\b"),
        "tensor shapes annotated (jaxtyping or torchtyping) in {files}",
        "no tensor-shape annotations (jaxtyping) in the code: nothing states the shapes "
        "forward() expects",
    ),
    Presence(
        "5.4",
        re.compile(
            r"\b(evidently|alibi_detect|nannyml|whylogs|ks_2samp|wasserstein_distance|"
            r"population_stability|drift)\b",
            re.IGNORECASE,
        ),
        "drift monitoring in {files}",
        "no drift monitoring in the code: no input statistics are compared with a training "
        "reference (--artifacts drift generates a snippet)",
    ),
    Presence(
        "7.3",
        re.compile(r"\b(torch_tensorrt|tensorrt|openvino|onnxruntime|tvm)\b"),
        "an inference compiler or runtime is used in {files}",
        "no inference compiler (TensorRT, ONNX Runtime, OpenVINO) in the code; TensorRT "
        "needs a CUDA GPU and torch-tensorrt{runs}",
    ),
    Presence(
        "12.2",
        re.compile(
            r"\b(captum|shap|lime|IntegratedGradients|GradCAM|grad_cam|saliency)\b",
            re.IGNORECASE,
        ),
        "attributions computed in {files}",
        "no attribution code (Captum, SHAP, Grad-CAM) in the project; the opt-in rule "
        "no-explainability-hook (--select) points at the classifier it concerns",
    ),
)


def presence_evidence(workspace: Workspace, runs: list[RunSummary]) -> list[tuple[int, Evidence]]:
    texts = [(f.path, f.text) for f in workspace.files if f.path.endswith((".py", ".ipynb"))]
    verdicts: list[tuple[str, Verdict, str]] = []
    for presence in _PRESENCES:
        files = [path for path, text in texts if presence.words.search(text)]
        if files:
            verdicts.append((presence.item, "pass", presence.present.format(files=_list(files))))
        else:
            verdicts.append((presence.item, "not-checked", presence.absent.format(runs=_on(runs))))
    verdicts.append(_input_checks(texts))
    verdicts.append(_groups(texts))
    documents = sorted(workspace.documents.items())  # the README and a model card
    verdicts.append(_method_reference(documents + [(f.path, f.text) for f in workspace.files]))
    return [
        (
            ITEMS_BY_ID[item].point,
            Evidence(
                source=SOURCE,
                source_version=__version__,
                kind="static",
                message=message,
                data={"items": [item], "verdict": verdict},
            ),
        )
        for item, verdict, message in verdicts
    ]


def _list(files: list[str]) -> str:
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def _on(runs: list[RunSummary]) -> str:
    devices = sorted({"cuda" if "cuda" in r.summary else "cpu" for r in runs if r.summary})
    return f" (the runs here: {', '.join(devices)})" if devices else ""


_CHECKED = re.compile(r"\.(shape|ndim|dim|dtype|size|isfinite|isnan)\b|torch\._assert|isfinite")


def _input_checks(texts: list[tuple[str, str]]) -> tuple[str, Verdict, str]:
    """2.1: an `assert` or a `raise` under a test on shapes, dtypes or finiteness."""
    found: list[str] = []
    for path, text in texts:
        if "torch" in text and _has_check(text, _checks_input):
            found.append(path)
    if found:
        return "2.1", "pass", f"inputs checked (shape, dtype or finiteness) in {_list(found)}"
    return (
        "2.1",
        "not-checked",
        "no input validation in the code: no assert or raise on a tensor's shape, dtype or "
        "finiteness at the model or data boundary",
    )


def _checks_input(node: ast.AST) -> bool:
    if isinstance(node, ast.Assert):
        return bool(_CHECKED.search(ast.unparse(node.test)))
    if isinstance(node, ast.If) and any(isinstance(n, ast.Raise) for n in node.body):
        return bool(_CHECKED.search(ast.unparse(node.test)))
    return False


def _has_check(text: str, check: Callable[[ast.AST], bool]) -> bool:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return any(check(node) for node in ast.walk(tree))


_GROUPED = re.compile(r"\b(MetricFrame|fairlearn|aif360|groupby|per_group|by_group)\b")


def _groups(texts: list[tuple[str, str]]) -> tuple[str, Verdict, str]:
    """12.1: metrics per group where the data has a group or a sensitive attribute."""
    grouped = [path for path, text in texts if _GROUPED.search(text)]
    if grouped:
        return "12.1", "pass", f"metrics disaggregated by group in {_list(grouped)}"
    sensitive = sorted({m[1].lower() for _p, text in texts for m in _SENSITIVE.finditer(text)})
    if sensitive:
        return (
            "12.1",
            "not-checked",
            f"the data has {', '.join(sensitive)} but no metric is computed per group; the "
            "opt-in rule no-group-metrics (--select) points at it",
        )
    return (
        "12.1",
        "not-applicable",
        "no group column or sensitive attribute appears in the code: nothing to compare "
        "metrics across (declare one in [tool.torchdoctor.groups] to have the run compute "
        "per-group metrics)",
    )


_REFERENCE = re.compile(
    r"arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})|\barXiv:\s?(\d{4}\.\d{4,5})"
    r"|\b(?:doi\.org/|doi:\s?)(10\.\d{4,9}/[^\s\"'<>)\]]{1,100})",
    re.IGNORECASE,
)
_REVIEW = "needs a reviewer's judgement (configure an LLM or review by hand)"


def _method_reference(texts: list[tuple[str, str]]) -> tuple[str, Verdict, str]:
    """3.2: the papers the project cites (arXiv ids, DOIs), or that it cites none; comparing
    the code with a method is a reviewer's call either way."""
    cited: dict[str, str] = {}
    for path, text in texts:
        for match in _REFERENCE.finditer(text):
            arxiv = match[1] or match[2]
            cited.setdefault(f"arXiv:{arxiv}" if arxiv else f"doi:{match[3].rstrip('.,;')}", path)
    if not cited:
        return (
            "3.2",
            "not-checked",
            "no paper is cited (no arXiv id or DOI in the project): the method the code should "
            f"follow is not stated where a check could read it; {_REVIEW}",
        )
    refs = sorted(cited)
    shown = ", ".join(f"{ref} ({cited[ref]})" for ref in refs[:3])
    more = f" and {len(refs) - 3} more" if len(refs) > 3 else ""
    return "3.2", "not-checked", f"cites {shown}{more}: whether the code follows it {_REVIEW}"
