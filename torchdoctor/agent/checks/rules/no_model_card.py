"""no-model-card: the project saves a model but documents it nowhere."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.models import Severity

_SAVERS = frozenset(
    {
        "torch.save",
        "torch.jit.save",
        "torch.onnx.export",
        "torch.export.save",
        "safetensors.torch.save_file",
        "safetensors.torch.save_model",
    }
)
_SAVE_METHODS = frozenset({"save_pretrained", "push_to_hub"})
_CARD_WORDS = ("model_card", "modelcard", "model card")
_FACT = "no-model-card"
_CARD_FILES = frozenset({"model_card.md", "modelcard.md"})
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\s*$", re.S | re.M)
_HF_KEYS = re.compile(
    r"^(license|library_name|pipeline_tag|model-index|base_model|datasets|tags):", re.M
)
_CARD_HEADINGS = re.compile(
    r"^(?:#+|\*\*)\s*(model card|model details|intended uses?|limitations|training data|"
    r"evaluation results|bias, risks,? and limitations)\b",
    re.IGNORECASE | re.M,
)


class NoModelCard(Rule):
    """Detects a project that saves or publishes a trained model (`torch.save`,
    `torch.jit.save`, `torch.onnx.export`, safetensors, `save_pretrained`, `push_to_hub`)
    while no module writes or mentions a model card (`MODEL_CARD`, `ModelCard`,
    `model_card`). Project-level: each module records what it saves, the project pass
    decides. A card kept in the repository counts too: a MODEL_CARD.md, a README with
    Hugging Face card metadata (front matter with `license:`, `pipeline_tag:`,
    `model-index:`...), or a README with a "Model card" section or two of the card's
    sections (intended use, limitations, training data, evaluation results). Saves in
    pytest modules (a tokenizer saved to a temporary folder and loaded back) release nothing
    and are not counted; a card word there still counts.

    Why it matters: a model without its intended use, training data, evaluation results and
    limitations gets reused where it fails (other populations, other input ranges) and
    cannot be audited; model cards (Mitchell et al., 2019) are the standard remedy.

    Example:
        torch.save(model.state_dict(), "classifier.pt")   # and nothing documents it

    Fix: add a MODEL_CARD.md next to the artifact (intended use, data, metrics per group,
    limitations, license), or write one with `huggingface_hub.ModelCard` when publishing.
    """

    id = "no-model-card"
    point = 12
    severity = Severity.LOW
    title = "No model card"
    items: ClassVar[tuple[str, ...]] = ("12.3",)

    @classmethod
    def document_facts(cls, documents: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        return {
            path: {_FACT: {"card": True, "save": None}}
            for path, text in documents.items()
            if is_model_card(path, text)
        }

    def applies(self, ctx: ModuleContext) -> bool:
        return "save" in ctx.source or "export" in ctx.source or "push_to_hub" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if (
            "save" not in ctx.source
            and "export" not in ctx.source
            and "push_to_hub" not in (ctx.source)
        ):
            return
        saves = ctx.flow.calls_to(_SAVERS) + ctx.flow.calls_named(_SAVE_METHODS)
        if ctx.test_module:
            saves = []  # a test saves into a temporary folder to load it back: no release
        lowered = ctx.source.lower()
        card = any(word in lowered for word in _CARD_WORDS)
        if not saves and not card:
            return
        first = min(saves, key=lambda c: c.lineno) if saves else None
        ctx.facts[_FACT] = {
            "card": card,
            "save": None
            if first is None
            else {
                "line": first.lineno,
                "code": ctx.lines[first.lineno - 1] if ctx.lines else "",
                "excerpt": ctx.excerpt(first.lineno, first.lineno),
            },
        }

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        entries = {path: f[_FACT] for path, f in facts.items() if _FACT in f}
        if not entries or any(entry["card"] for entry in entries.values()):
            return []
        saving = sorted((path, e["save"]) for path, e in entries.items() if e["save"])
        if not saving:
            return []
        path, save = saving[0]
        return [
            RawFinding(
                rule=cls.id,
                file=path,
                line=save["line"],
                end_line=save["line"],
                code=save["code"],
                message="the project saves a model but no model card documents its intended "
                "use, data, metrics and limitations",
                severity=cls.severity,
                excerpt=save["excerpt"],
            )
        ]


def is_model_card(path: str, text: str) -> bool:
    """A card file by its name, a README with card metadata or with card sections."""
    if path.rsplit("/", 1)[-1].lower() in _CARD_FILES:
        return bool(text.strip())
    front = _FRONT_MATTER.match(text)
    if front is not None and _HF_KEYS.search(front[1]):
        return True
    headings = {m[1].lower().removesuffix("s") for m in _CARD_HEADINGS.finditer(text)}
    return "model card" in headings or len(headings) >= 2
