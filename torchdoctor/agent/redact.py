"""Secrets masked in every text torchdoctor shows or sends, whatever tool found them.

A peer (detect-secrets, bandit) reports a secret with an excerpt of the line that holds it;
the LLM is sent windows of the source. Both pass through `mask_secrets`: known token shapes
(Hugging Face, OpenAI, AWS, GitHub, Slack) and long random-looking quoted literals bound to a
secret-like name keep their first four characters, the rest becomes `********`.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from torchdoctor.agent.models import Evidence, Finding

TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")),
    ("OpenAI key", re.compile(r"\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("Slack token", re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}")),
)
_NAMED_LITERAL = re.compile(
    r"(?P<name>(?:api_?key|key|token|secret|passw(?:or)?d|access_key|auth)\w*['\"]?\s*[=:]\s*)"
    r"(?P<quote>['\"])(?P<value>[^'\"\s]{16,})(?P=quote)",
    re.IGNORECASE,
)


def mask(secret: str) -> str:
    return secret[:4] + "*" * 8


def looks_random(text: str) -> bool:
    """Mixes letters and digits with high character entropy, unlike names and sentences."""
    if "." in text or not any(c.isdigit() for c in text) or not any(c.isalpha() for c in text):
        return False
    counts = Counter(text)
    entropy = -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())
    return entropy >= 3.0


def mask_secrets(text: str) -> str:
    for _kind, pattern in TOKEN_PATTERNS:
        text = pattern.sub(lambda m: mask(m.group()), text)

    def named(match: re.Match[str]) -> str:
        value = match.group("value")
        if not looks_random(value) or value.endswith("*" * 8):
            return match.group()
        return f"{match.group('name')}{match.group('quote')}{mask(value)}{match.group('quote')}"

    return _NAMED_LITERAL.sub(named, text)


def _evidence(evidence: Evidence) -> Evidence:
    return evidence.model_copy(
        update={
            "message": mask_secrets(evidence.message),
            "excerpt": mask_secrets(evidence.excerpt) if evidence.excerpt else evidence.excerpt,
        }
    )


def masked_finding(finding: Finding) -> Finding:
    """`finding` with every evidence message and excerpt, and its title, masked."""
    return finding.model_copy(
        update={
            "title": mask_secrets(finding.title),
            "evidence": [_evidence(e) for e in finding.evidence],
        }
    )
