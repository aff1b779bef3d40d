"""hardcoded-secrets: API tokens and keys written in the source."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.models import Severity
from torchdoctor.agent.redact import TOKEN_PATTERNS, looks_random, mask

# Whole words of a snake_cased name: `hf_token`, `apiKey`, `db_password`, `Authorization`,
# but not `tokenizer_dir`, `max_tokens` or `author` (a hub id passed as `tokenizer_dir=`).
_SECRET_NAME = re.compile(
    r"(^|_)(api_?key|access_key|secret_key|token|secret|passw(or)?d|auth|authorization|"
    r"credentials?)(_|$)|^key$",
    re.IGNORECASE,
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PLACEHOLDER = re.compile(r"your|xxx|<|>|\.\.\.|example|changeme|dummy|test|\{|\$", re.IGNORECASE)
# Cheap gates over the whole file: a known token shape (case-sensitive, so the regex engine
# scans for literal prefixes), or a secret-like name bound to a long quoted literal.
_TOKEN_GATE = re.compile(r"hf_[A-Za-z0-9]{30}|sk-[\w-]{20}|AKIA|ASIA|gh[pousr]_\w{36}|xox[abpr]-")
_TOKEN_PREFIXES = ("hf_", "sk-", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox")
"""What `_TOKEN_GATE` matches starts with one of these: the regex scans only a text with one."""
_NAMED_GATES = tuple(
    (word, re.compile(word + r"\w*['\"]?\s*[=:]\s*['\"][^'\"\s]{16,}['\"]"))
    for word in ("key", "token", "secret", "passw", "auth")
)
"""One pattern per secret-like word, not one alternation: a pattern that starts with a literal
is found by the regex engine's fast literal search, an alternation is tried at every position
of the file (twice as slow on torch's sources). The text matches one iff it matches the
alternation. Each is searched for only in a text that holds its word (the lower-cased text's
word index answers that without reading it)."""


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
        source = ctx.source
        tokens = any(p in source for p in _TOKEN_PREFIXES) and _TOKEN_GATE.search(source)
        lowered = source.lower()
        if not tokens and not any(
            word in lowered and gate.search(lowered) for word, gate in _NAMED_GATES
        ):
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
        code = code.replace(secret, mask(secret))
        excerpt = excerpt.replace(secret, mask(secret))
    return finding.model_copy(update={"code": code, "excerpt": excerpt})


def _token_kind(text: str) -> str | None:
    for kind, pattern in TOKEN_PATTERNS:
        if pattern.search(text):
            return kind
    return None


def _named_secret(ctx: ModuleContext, node: ast.Constant) -> str | None:
    text = str(node.value)
    if " " in text or _PLACEHOLDER.search(text) or not looks_random(text):
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
    if any(_SECRET_NAME.search(_CAMEL.sub("_", name).replace("-", "_")) for name in names):
        return "credential"
    return None
