"""hub-remote-code: model loading that executes code fetched from a remote repository."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_HUB_LOADERS = frozenset({"torch.hub.load", "torch.hub.list", "torch.hub.help"})


class HubRemoteCode(Rule):
    """Detects `torch.hub.load(...)` from a remote repository (it imports and runs the
    repository's `hubconf.py`) and any call with `trust_remote_code=True` (Hugging Face
    `from_pretrained`, `pipeline`, `AutoModel...`), which executes Python shipped with the
    model.

    Why it matters: the code runs with the training job's permissions and credentials, and
    the remote repository can change between two runs unless a revision is pinned.

    Example:
        model = AutoModel.from_pretrained("org/model", trust_remote_code=True)

    Not reported: `trust_remote_code=True` given to a concrete class of `transformers`
    (`Qwen2VLImageProcessor.from_pretrained(name, trust_remote_code=True)`): only the `Auto*`
    factories (and `pipeline`) read the flag and fetch a model's own code; a class the library
    ships runs its own code, whatever the repository holds.

    Fix: prefer architectures available in the installed libraries; otherwise review the
    remote code and pin it (`revision=<commit sha>` for Hugging Face, `repo:tag` or a local
    clone with `source="local"` for torch.hub).
    """

    id = "hub-remote-code"
    point = 11
    severity = Severity.MEDIUM
    severity_note = "high when no revision= pins the remote code; medium when a revision is pinned"
    title = "Model loading runs remote code"
    items: ClassVar[tuple[str, ...]] = ("11.2",)
    triggers = Triggers(("hub", "pretrained", "trust_remote_code"))

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            "hub" in ctx.source or "pretrained" in ctx.source or "trust_remote_code" in ctx.source
        )

    def finish(self, ctx: ModuleContext) -> None:
        if "hub" in ctx.source or "trust_remote_code" in ctx.source:
            for node in ctx.flow.nodes(ast.Call):
                self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        trust = kwarg(node, "trust_remote_code")
        if isinstance(trust, ast.Constant) and trust.value is True:
            if _concrete_transformers_class(ctx, node):
                return  # the flag only matters to the Auto* factories: nothing remote runs
            pinned = kwarg(node, "revision") is not None
            ctx.report(
                self,
                node,
                "trust_remote_code=True executes Python shipped with the model"
                + ("" if pinned else ", and no revision= pins it"),
                severity=Severity.MEDIUM if pinned else Severity.HIGH,
                data={"pinned": pinned},
            )
            return
        if ctx.flow.qualname_of(node) in _HUB_LOADERS:
            source = kwarg(node, "source")
            if isinstance(source, ast.Constant) and source.value == "local":
                return
            ctx.report(
                self,
                node,
                "torch.hub runs the remote repository's hubconf.py: pin a tag or commit and "
                "review it, or load from a local clone",
            )


def _concrete_transformers_class(ctx: ModuleContext, node: ast.Call) -> bool:
    """`Qwen3VLMoeForConditionalGeneration.from_pretrained(...)`: a loader of a class that
    `transformers` defines itself (not an `Auto*` factory)."""
    func = node.func
    if not (isinstance(func, ast.Attribute) and func.attr in ("from_pretrained", "from_config")):
        return False
    qual = ctx.qualname(func.value) or ""
    name = qual.rsplit(".", 1)[-1]
    return (
        qual.startswith("transformers.")
        and name[:1].isupper()
        and not name.startswith(("Auto", "TF", "Flax"))
    )
