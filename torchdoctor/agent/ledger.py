"""ISSUES.md: the ledger of problems treated and to treat, merged into, never clobbered.

torchdoctor owns only the block between its markers; everything outside is kept byte for
byte. Inside, each finding carries a hidden metadata comment so a finding that disappears can
still be listed (as fixed), and a `Status:` line the user may edit: `wont-fix` and
`needs-human` set by hand survive every re-run. Unchanged code gives a byte-identical file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from torchdoctor import __version__
from torchdoctor.agent.checklist import ITEMS_BY_ID, POINTS, point_title
from torchdoctor.agent.i18n import labels
from torchdoctor.agent.models import AuditReport, Evidence, Finding, Status

BEGIN = "<!-- torchdoctor:begin -->"
END = "<!-- torchdoctor:end -->"
LEDGER_NAME = "ISSUES.md"
USER_STATUSES = frozenset({Status.WONT_FIX, Status.NEEDS_HUMAN})

_ENTRY = re.compile(r"^#### (TD-[0-9a-f]{12}) ", re.MULTILINE)
_META = re.compile(r"^<!-- td-entry (\{.*\}) -->$", re.MULTILINE)
_STATUS = re.compile(r"^- (?:Status|Statut) ?: *([a-z-]+)(?: *— *(.*))?$", re.MULTILINE)


def default_ledger_path(target: Path) -> Path:
    folder = target if target.is_dir() else target.parent
    return folder / LEDGER_NAME


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


_ENV = Environment(
    loader=PackageLoader("torchdoctor.agent", "templates"),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)
_ENV.filters["cell"] = _cell


@dataclass
class Entry:
    id: str
    status: Status
    note: str
    meta: dict[str, object]


@dataclass
class Ledger:
    before: str = ""
    after: str = "\n"
    entries: dict[str, Entry] = field(default_factory=dict)
    rendered: str | None = None

    @classmethod
    def empty(cls) -> Ledger:
        return cls()

    @classmethod
    def read(cls, path: Path) -> Ledger:
        if not path.is_file():
            return cls(before="# Issues\n\n")
        text = path.read_text(encoding="utf-8")
        start, end = text.find(BEGIN), text.find(END)
        if start == -1 or end == -1 or end < start:
            sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
            return cls(before=text + sep)
        block = text[start + len(BEGIN) : end]
        return cls(before=text[:start], after=text[end + len(END) :], entries=_parse_entries(block))

    def apply_user_statuses(self, findings: list[Finding]) -> list[Finding]:
        """Statuses the user set by hand win over a re-run's `open`."""
        result = []
        for finding in findings:
            entry = self.entries.get(finding.id)
            if entry and entry.status in USER_STATUSES and finding.status == Status.OPEN:
                note = f"status set in {LEDGER_NAME}: {entry.status.value}"
                note += f" — {entry.note}" if entry.note else ""
                finding = finding.model_copy(
                    update={
                        "status": entry.status,
                        "evidence": [
                            *finding.evidence,
                            Evidence(source="ledger", kind="input", message=note),
                        ],
                    }
                )
            result.append(finding)
        return result

    def merge(self, report: AuditReport, lang: str = "en") -> Ledger:
        L = labels(lang)
        current = {f.id: f for f in report.findings}
        rows = [_row_from_finding(f, self.entries.get(f.id)) for f in report.findings]
        for entry_id, entry in sorted(self.entries.items()):
            if entry_id in current:
                continue
            meta = dict(entry.meta)
            status = (
                entry.status if entry.status in (Status.FIXED, Status.VERIFIED) else Status.FIXED
            )
            note = entry.note if entry.status in (Status.FIXED, Status.VERIFIED) else L["no_longer"]
            rows.append(
                {
                    **meta,
                    "id": entry_id,
                    "status": status.value,
                    "note": note,
                    "diff": "",
                    "fix_verified": False,
                    "meta_json": json.dumps(meta, sort_keys=True, ensure_ascii=False),
                }
            )
        rows.sort(
            key=lambda r: (
                int(str(r["phase"])),
                int(str(r["point"])),
                str(r["file"]),
                int(str(r["line"])),
                str(r["id"]),
            )
        )
        open_rows = [r for r in rows if Status(str(r["status"])).is_open]
        treated = [r for r in rows if not Status(str(r["status"])).is_open]
        points = [
            {
                "number": p.number,
                "title": point_title(p.number, lang),
                "open": sum(1 for r in open_rows if r["point"] == p.number),
                "treated": sum(1 for r in treated if r["point"] == p.number),
            }
            for p in POINTS
        ]
        coverage = [
            {
                **c.model_dump(),
                "title": ITEMS_BY_ID[c.item].title(lang) if c.item in ITEMS_BY_ID else c.item,
            }
            for c in report.coverage
        ]
        block = _ENV.get_template("ledger.md.j2").render(
            L=L,
            target=Path(report.target.path).name or report.target.path,
            version=__version__,
            points=points,
            open_entries=open_rows,
            treated_entries=treated,
            gates=report.summary.gates,
            coverage=coverage,
        )
        block = re.sub(r"\n{3,}", "\n\n", block)
        return Ledger(
            before=self.before,
            after=self.after,
            entries=self.entries,
            rendered=f"{BEGIN}\n{block.strip()}\n{END}",
        )

    def text(self) -> str:
        if self.rendered is None:
            raise ValueError("merge() the ledger with a report before writing it")
        return f"{self.before}{self.rendered}{self.after}"

    def write(self, path: Path) -> None:
        """Atomic: a temporary file in the same folder, then rename; untouched if unchanged."""
        text = self.text()
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ISSUES.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
            if path.exists():
                os.chmod(tmp, path.stat().st_mode & 0o7777)
            else:
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _parse_entries(block: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    matches = list(_ENTRY.finditer(block))
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(block)
        body = block[match.start() : end]
        meta_match = _META.search(body)
        status_match = _STATUS.search(body)
        if not meta_match or not status_match:
            continue
        try:
            meta = json.loads(meta_match.group(1))
            status = Status(status_match.group(1))
        except (json.JSONDecodeError, ValueError):
            continue
        entries[match.group(1)] = Entry(
            id=match.group(1), status=status, note=(status_match.group(2) or "").strip(), meta=meta
        )
    return entries


def _row_from_finding(finding: Finding, previous: Entry | None) -> dict[str, object]:
    meta: dict[str, object] = {
        "rule": finding.rule,
        "point": finding.checkpoint,
        "phase": finding.phase,
        "severity": finding.severity.value,
        "title": finding.title,
        "file": finding.file,
        "line": finding.line,
        "evidence": finding.evidence[0].message if finding.evidence else "",
    }
    note = previous.note if previous and previous.status == finding.status else ""
    return {
        **meta,
        "id": finding.id,
        "status": finding.status.value,
        "note": note,
        "diff": finding.fix.diff.rstrip("\n") if finding.fix else "",
        "fix_verified": bool(finding.fix and finding.fix.verified),
        "meta_json": json.dumps(meta, sort_keys=True, ensure_ascii=False),
    }
