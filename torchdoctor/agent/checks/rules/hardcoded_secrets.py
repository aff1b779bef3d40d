"""hardcoded-secrets: API tokens and keys written in the source."""

from __future__ import annotations

import ast
import math
import re
from collections import Counter
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.models import Severity

_TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("OpenAI key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Slack token", re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}")),
)
_SECRET_NAME = re.compile(
    r"(api_?key|^key$|token|secret|passw(or)?d|access_key|auth)", re.IGNORECASE
)
_PLACEHOLDER = re.compile(r"your|xxx|<|>|\.\.\.|example|changeme|dummy|test|\{|\$", re.IGNORECASE)
# Cheap gates over the whole file: a known token shape (case-sensitive, so the regex engine
# scans for literal prefixes), or a secret-like name bound to a long quoted literal.
_TOKEN_GATE = re.compile(r"hf_[A-Za-z0-9]{30}|sk-[\w-]{20}|AKIA|ASIA|gh[pousr]_\w{36}|xox[abpr]-")
_NAMED_GATE = re.compile(
    r"(?:key|token|secret|passw|auth)\w*['\"]?\s*[=:]\s*['\"][^'\"\s]{16,}['\"]"
)


class HardcodedSecrets(Rule):
    """Detects credentials in string literals: Hugging Face (`hf_...`), OpenAI (`sk-...`),
    AWS access key ids, GitHub and Slack tokens, and long random-looking strings assigned to
    names or keywords like `api_key`, `token`, `secret`, `password` (e.g. a W&B key passed to
    `wandb.login(key=...)`). Placeholders (`"your-token"`, `"<key>"`) are ignored. The
    reported code and excerpt are masked so reports do not spread the secret further.

    Why it matters: anything committed is readable by everyone with the repository, forks
    and CI logs included, and stays in git history after deletion; leaked hub or cloud
    tokens give write access to models, data and billing.

    Example:
        wandb.login(key="3f9a8c...e1")

    Fix: revoke the token, then read it from the environment
    (`os.environ["WANDB_API_KEY"]`) or a secret manager; keep `.env` files out of git.
    """

    id = "hardcoded-secrets"
    point = 11
    severity = Severity.HIGH
    title = "Hard-coded secret"
    items: ClassVar[tuple[str, ...]] = ("11.3",)

    def finish(self, ctx: ModuleContext) -> None:
        if not _TOKEN_GATE.search(ctx.source) and not _NAMED_GATE.search(ctx.source.lower()):
            return
        first = len(ctx.findings)
        secrets: list[str] = []
        for node in ctx.flow.nodes(ast.Constant):
            if not isinstance(node.value, str) or len(node.value) < 16:
                continue
            kind = _token_kind(node.value) or _named_secret(ctx, node)
            if kind is None:
                continue
            secrets.append(node.value)
            ctx.report(
                self,
                node,
                f"a {kind} is written in the source: revoke it and read it from the environment",
                data={"kind": kind},
            )
        for index in range(first, len(ctx.findings)):
            ctx.findings[index] = _masked(ctx.findings[index], secrets)


def _masked(finding: RawFinding, secrets: list[str]) -> RawFinding:
    """The finding with every detected secret of the module masked in its code and excerpt."""
    code, excerpt = finding.code, finding.excerpt
    for secret in secrets:
        code = code.replace(secret, _mask(secret))
        excerpt = excerpt.replace(secret, _mask(secret))
    return finding.model_copy(update={"code": code, "excerpt": excerpt})


def _token_kind(text: str) -> str | None:
    for kind, pattern in _TOKEN_PATTERNS:
        if pattern.search(text):
            return kind
    return None


def _named_secret(ctx: ModuleContext, node: ast.Constant) -> str | None:
    text = str(node.value)
    if " " in text or _PLACEHOLDER.search(text) or not _looks_random(text):
        return None
    parent = ctx.parents.get(node)
    names: list[str] = []
    if isinstance(parent, ast.Assign):
        names = [identifier(t) for t in parent.targets]
    elif isinstance(parent, ast.keyword) and parent.arg:
        names = [parent.arg]
    elif isinstance(parent, ast.Dict):
        names = [
            str(k.value)
            for k, v in zip(parent.keys, parent.values, strict=True)
            if v is node and isinstance(k, ast.Constant)
        ]
    if any(_SECRET_NAME.search(name) for name in names):
        return "credential"
    return None


def _looks_random(text: str) -> bool:
    """Mixes letters and digits with high character entropy, unlike names and sentences."""
    if "." in text or not any(c.isdigit() for c in text) or not any(c.isalpha() for c in text):
        return False
    counts = Counter(text)
    entropy = -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())
    return entropy >= 3.0


def _mask(secret: str) -> str:
    return secret[:4] + "*" * 8
