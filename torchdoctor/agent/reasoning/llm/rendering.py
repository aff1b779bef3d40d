"""Renders the Jinja2 templates of the top-level `prompts` package into chat messages.

Templates use StrictUndefined (a missing variable is a bug, not an empty string). Every
untrusted text (code, evidence, tool output) is placed between markers carrying a boundary
token derived from that text's hash: the code cannot know the token without changing itself, so
it cannot close the data block and speak as the instructions. Each template's hash (its source
and the templates it extends or includes) goes into the report's provenance.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from torchdoctor import prompts

LANGUAGES = ("en", "fr")
PROMPTS_DIR = Path(prompts.__file__).parent


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROMPTS_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def template_name(lang: str, name: str) -> str:
    return f"{lang if lang in LANGUAGES else 'en'}/{name}.j2"


def render(lang: str, name: str, **context: Any) -> str:
    return environment().get_template(template_name(lang, name)).render(**context).strip()


@cache
def template_hash(lang: str, name: str) -> str:
    """sha256 (12 hex) over the template and everything it extends or includes."""
    env = environment()
    digest = hashlib.sha256()
    seen: set[str] = set()
    pending = [template_name(lang, name)]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        source = (PROMPTS_DIR / current).read_text(encoding="utf-8")
        digest.update(current.encode() + b"\0" + source.encode() + b"\0")
        for ref in jinja2.meta.find_referenced_templates(env.parse(source)):
            if ref:
                pending.append(ref)
    return digest.hexdigest()[:12]


def boundary_for(*untrusted: str) -> str:
    """A token that cannot occur in the untrusted text (it is derived from that text's hash)."""
    joined = "\0".join(untrusted)
    salt = 0
    while True:
        token = hashlib.sha256(f"{salt}\0{joined}".encode()).hexdigest()[:20].upper()
        if token not in joined:
            return f"DATA-{token}"
        salt += 1
