"""Regenerate torchdoctor/agent/checks/data/peer_rules.json from the installed peer linters.

Each entry is one code a peer tool reports, with the tool's own text and a link to its
documentation; `torchdoctor rules` lists them under ids `<tool>-<code>`. Run it after
upgrading a linter: `.venv/bin/python scripts/peer_rules.py`.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "torchdoctor/agent/checks/data/peer_rules.json"
MAX_DOC = 700


def _doc(text: str | None) -> str:
    """The first paragraphs of a docstring, up to MAX_DOC characters, cut at a paragraph."""
    lines = [ln for ln in inspect.cleandoc(text or "").splitlines() if set(ln.strip()) != {"="}]
    paragraphs = [" ".join(p.split()) for p in "\n".join(lines).split("\n\n")]
    kept: list[str] = []
    for paragraph in paragraphs:
        if not paragraph or paragraph.startswith((".. ", ":")):
            break
        if kept and sum(len(k) for k in kept) + len(paragraph) > MAX_DOC:
            break
        kept.append(paragraph.replace("**", "").strip())
    return "\n\n".join(kept)


def bandit_rules() -> list[dict[str, Any]]:
    from bandit.core import extension_loader

    manager = extension_loader.MANAGER
    rules = []
    for plugin in manager.plugins:
        code = plugin.plugin._test_id
        module_doc = sys.modules[plugin.plugin.__module__].__doc__
        doc = _doc(plugin.plugin.__doc__) or _doc(module_doc)
        head = doc.split("\n\n")[0]
        if head.startswith(f"{code}:"):
            title, doc = head.split(":", 1)[1].strip(), doc[len(head) :].strip()
        else:
            title = plugin.name.replace("_", " ")
        rules.append(
            {
                "tool": "bandit",
                "code": code,
                "title": title,
                "doc": doc,
                "link": "https://bandit.readthedocs.io/en/latest/plugins/"
                f"{code.lower()}_{plugin.name}.html",
            }
        )
    for code, entry in manager.blacklist_by_id.items():
        kind = "imports" if code.startswith("B4") else "calls"
        rules.append(
            {
                "tool": "bandit",
                "code": code,
                "title": f"{entry['name']}: {entry['message']}",
                "doc": f"{entry['message']} (CWE-{entry.get('cwe', '?')}; "
                f"{', '.join(entry.get('qualnames', [])[:8])})",
                "link": f"https://bandit.readthedocs.io/en/latest/blacklists/blacklist_{kind}.html",
            }
        )
    return rules


def torchfix_rules() -> list[dict[str, Any]]:
    import torchfix.torchfix as tf

    rules = []
    for visitor in tf.ALL_VISITOR_CLS:
        for error in visitor.ERRORS:
            rules.append(
                {
                    "tool": "torchfix",
                    "code": error.error_code,
                    "title": error.message_template.replace("{", "<").replace("}", ">"),
                    "doc": _doc(visitor.__doc__) or error.message_template,
                    "link": "https://github.com/pytorch-labs/torchfix#rules",
                }
            )
    return rules


def ruff_rules(codes: list[str]) -> list[dict[str, Any]]:
    rules = []
    for code in codes:
        out = subprocess.run(
            [str(ROOT / ".venv/bin/ruff"), "rule", code, "--output-format", "json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        info = json.loads(out)
        explanation = info.get("explanation", "").split("## Why is this bad?")
        why = explanation[1].split("##")[0] if len(explanation) > 1 else info["summary"]
        rules.append(
            {
                "tool": "ruff",
                "code": code,
                "title": info["summary"],
                "doc": _doc(why),
                "link": f"https://docs.astral.sh/ruff/rules/{info['name']}/",
            }
        )
    return rules


def detect_secrets_rules() -> list[dict[str, Any]]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    return [
        {
            "tool": "detect-secrets",
            "code": secret_type,
            "title": f"Potential secret: {secret_type}",
            "doc": _doc(plugin.__doc__) or f"detect-secrets' {plugin.__name__} found a secret.",
            "link": "https://github.com/Yelp/detect-secrets#viewing-all-enabled-plugins",
        }
        for secret_type, plugin in sorted(get_mapping_from_secret_type_to_class().items())
    ]


def mypy_rules() -> list[dict[str, Any]]:
    from mypy import errorcodes

    return [
        {
            "tool": "mypy",
            "code": code,
            "title": error.description,
            "doc": error.description,
            "link": "https://mypy.readthedocs.io/en/stable/error_code_list.html",
        }
        for code, error in sorted(errorcodes.error_codes.items())
    ]


def main() -> int:
    table = json.loads((OUT.parent / "linter_codes.json").read_text(encoding="utf-8"))
    ruff_codes = [c for c in table["tools"]["ruff"]["codes"] if c != "invalid-syntax"]
    rules = [
        *torchfix_rules(),
        *ruff_rules(ruff_codes),
        {
            "tool": "ruff",
            "code": "invalid-syntax",
            "title": "The file does not parse",
            "doc": "ruff could not parse the file: a syntax error.",
            "link": "https://docs.astral.sh/ruff/linter/",
        },
        *bandit_rules(),
        *detect_secrets_rules(),
        {
            "tool": "pip-audit",
            "code": "<vulnerability id>",
            "title": "A pinned dependency has a known vulnerability",
            "doc": "pip-audit matched a dependency pin against the Python Packaging Advisory "
            "Database / OSV; the finding's id is `pip-audit-<advisory id>` (e.g. "
            "`pip-audit-pysec-2024-1`). Silence one advisory by its id, or the tool with "
            "`pip-audit`.",
            "link": "https://pypi.org/project/pip-audit/",
        },
        *mypy_rules(),
    ]
    seen: set[tuple[str, str]] = set()
    unique = []
    for rule in rules:
        key = (rule["tool"], rule["code"])
        if key not in seen:
            seen.add(key)
            unique.append(rule)
    payload = {
        "_comment": "Generated by scripts/peer_rules.py from the installed tools.",
        "rules": unique,
    }
    OUT.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(unique)} peer rules -> {OUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
