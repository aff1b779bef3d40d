"""unverified-download: weights downloaded without checking a hash."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_URL_LOADERS = frozenset(
    {
        "torch.hub.load_state_dict_from_url",
        "torch.utils.model_zoo.load_url",
        "torchvision.models.utils.load_state_dict_from_url",
    }
)
_FILE_DOWNLOADERS = frozenset({"torch.hub.download_url_to_file"})
_RAW_DOWNLOADERS = frozenset({"urllib.request.urlretrieve", "wget.download"})
_WEIGHTS = re.compile(r"\.(pt|pth|bin|ckpt|safetensors|pkl|h5|onnx|tar)\b", re.IGNORECASE)


class UnverifiedDownload(Rule):
    """Detects weights fetched without integrity checking: `load_state_dict_from_url` /
    `model_zoo.load_url` without `check_hash=True`, `torch.hub.download_url_to_file` without
    `hash_prefix`, and `urllib.request.urlretrieve`/`wget.download` of a weights file
    (`.pt`, `.pth`, `.bin`, `.ckpt`, ...) in a module that never uses `hashlib`.

    Why it matters: without a checksum a truncated, swapped or tampered file is loaded
    silently; combined with pickle-based loading it is a code-execution path.

    Example:
        state = load_state_dict_from_url("https://example.org/resnet.pth")

    Fix: put the SHA-256 prefix in the file name and pass `check_hash=True` (torch.hub's
    convention), `hash_prefix=` for `download_url_to_file`, or verify with `hashlib` before
    loading.
    """

    id = "unverified-download"
    point = 11
    severity = Severity.MEDIUM
    title = "Download without checksum"
    items: ClassVar[tuple[str, ...]] = ("11.2",)
    triggers = Triggers(("url", "download"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "url" in ctx.source or "download" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "url" in ctx.source or "download" in ctx.source:
            for node in ctx.flow.calls_to(_URL_LOADERS | _FILE_DOWNLOADERS | _RAW_DOWNLOADERS):
                if not any(k.arg is None for k in node.keywords):
                    self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        qual = ctx.flow.qualname_of(node)
        if qual in _URL_LOADERS:
            check = kwarg(node, "check_hash")
            if not (isinstance(check, ast.Constant) and check.value is True):
                self._report(ctx, node, f"`{qual}` without check_hash=True")
        elif qual in _FILE_DOWNLOADERS:
            if kwarg(node, "hash_prefix") is None and len(node.args) < 3:
                self._report(ctx, node, f"`{qual}` without hash_prefix=")
        elif (
            qual in _RAW_DOWNLOADERS
            and "hashlib" not in ctx.source
            and any(
                isinstance(a, ast.Constant)
                and isinstance(a.value, str)
                and _WEIGHTS.search(a.value)
                for a in walk_tree(node)
            )
        ):
            self._report(ctx, node, f"`{qual}` of a weights file with no hash check")

    def _report(self, ctx: ModuleContext, node: ast.Call, what: str) -> None:
        ctx.report(
            self,
            node,
            f"{what}: a corrupted or tampered file is loaded without notice",
        )
