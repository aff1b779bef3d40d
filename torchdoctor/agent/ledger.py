"""ISSUES.md: the ledger of problems treated and to treat, merged into, never clobbered.

torchdoctor owns only the block between its markers; everything outside is kept byte for
byte. Inside, each finding carries a hidden metadata comment so a finding that disappears can
still be listed (as fixed), and a `Status:` line the user may edit: `wont-fix` and
`needs-human` set by hand survive every re-run. Unchanged code gives a byte-identical file.

The file lives in the audited (untrusted) tree: it is read and replaced only through
`torchdoctor.agent.safefs` (never through a link), every text rendered into it is escaped to
one inert line, and a status is accepted only from an entry's own well-formed syntax, read
line by line outside code fences, so no text inside one entry can create or change another.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchdoctor import __version__
from torchdoctor.agent.checklist import ITEMS_BY_ID, POINTS, point_title
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.i18n import labels
from torchdoctor.agent.markdown_env import templates
from torchdoctor.agent.models import AuditReport, Evidence, Finding, Status
from torchdoctor.agent.safefs import file_tree

BEGIN = "<!-- torchdoctor:begin -->"
END = "<!-- torchdoctor:end -->"
LEDGER_NAME = "ISSUES.md"
USER_STATUSES = frozenset({Status.WONT_FIX, Status.NEEDS_HUMAN})

_ENTRY = re.compile(r"^#### (TD-[0-9a-f]{12}) — ")
_META = re.compile(r"^<!-- td-entry (\{[^<>]*\}) -->$")
_STATUS = re.compile(r"^- (?:Status|Statut) ?: *([a-z-]+)(?: *— *(.*))?$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
MAX_LEDGER_BYTES = 20_000_000
MAX_META_TEXT = 1000


class EntryMeta(BaseModel):
    """The hidden metadata of one entry, as torchdoctor wrote it (anything else: ignored)."""

    model_config = ConfigDict(extra="forbid")

    rule: str = Field(max_length=200)
    point: int = Field(ge=1, le=12)
    phase: int = Field(ge=1, le=5)
    severity: str = Field(max_length=20)
    title: str = Field(max_length=2000)
    file: str = Field(max_length=4096)
    line: int = Field(ge=0)
    evidence: str = Field(max_length=20_000)


def default_ledger_path(target: Path) -> Path:
    folder = target if target.is_dir() else target.parent
    return folder / LEDGER_NAME


LEDGER_TEMPLATE = "ledger.md.j2"


def entry_meta(finding: Finding) -> EntryMeta:
    """The hidden metadata written for `finding` (texts on one line, bounded)."""
    evidence = finding.evidence[0].message if finding.evidence else ""
    return EntryMeta(
        rule=finding.rule,
        point=finding.checkpoint,
        phase=finding.phase,
        severity=finding.severity.value,
        title=one_line(finding.title)[:MAX_META_TEXT],
        file=finding.file,
        line=finding.line,
        evidence=one_line(evidence)[:MAX_META_TEXT],
    )


class UserStatus(BaseModel):
    """A status the user set by hand in the ledger (wont-fix, needs-human), with its note."""

    model_config = ConfigDict(extra="forbid")

    status: Status
    note: str = ""


def apply_user_statuses(findings: list[Finding], statuses: dict[str, UserStatus]) -> list[Finding]:
    """Statuses the user set by hand win over a re-run's `open`."""
    result = []
    for finding in findings:
        entry = statuses.get(finding.id)
        if entry is not None and finding.status == Status.OPEN:
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


@dataclass
class Entry:
    id: str
    status: Status
    note: str
    meta: EntryMeta


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
        """The ledger at `path`; `UnsafePath` (an `OSError`) when it is a link, a FIFO, a
        device or too large, and `UnicodeDecodeError` when it is not UTF-8."""
        tree, name = file_tree(path)
        if not tree.exists(name):
            return cls(before="# Issues\n\n")
        text = tree.read_text(name, MAX_LEDGER_BYTES)
        start, end = text.find(BEGIN), text.find(END)
        if start == -1 or end == -1 or end < start:
            sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
            return cls(before=text + sep)
        block = text[start + len(BEGIN) : end]
        return cls(before=text[:start], after=text[end + len(END) :], entries=_parse_entries(block))

    def user_statuses(self) -> dict[str, UserStatus]:
        """The statuses set by hand (`wont-fix`, `needs-human`), by finding id."""
        return {
            entry_id: UserStatus(status=entry.status, note=entry.note)
            for entry_id, entry in self.entries.items()
            if entry.status in USER_STATUSES
        }

    def apply_user_statuses(self, findings: list[Finding]) -> list[Finding]:
        return apply_user_statuses(findings, self.user_statuses())

    def merge(
        self, report: AuditReport, lang: str = "en", phases: frozenset[int] | None = None
    ) -> Ledger:
        """The block for `report`. With `phases` (a partial audit), entries of the other
        phases are kept as they were instead of being marked fixed."""
        from torchdoctor.agent.localise import localise

        L = labels(lang)
        report = localise(report, lang)
        current = {f.id: f for f in report.findings}
        rows = [_row_from_finding(f, self.entries.get(f.id)) for f in report.findings]
        for entry_id, entry in sorted(self.entries.items()):
            if entry_id in current:
                continue
            meta = entry.meta.model_dump()
            if phases is not None and entry.meta.phase not in phases:
                rows.append(
                    {
                        **meta,
                        "id": entry_id,
                        "status": entry.status.value,
                        "note": entry.note,
                        "diff": "",
                        "fix_verified": False,
                        "fix_check": "",
                        "meta_json": _meta_json(meta),
                    }
                )
                continue
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
                    "fix_check": "",
                    "meta_json": _meta_json(meta),
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
        block = (
            templates()
            .get_template(LEDGER_TEMPLATE)
            .render(
                L=L,
                target=Path(report.target.path).name or report.target.path,
                version=__version__,
                points=points,
                open_entries=open_rows,
                treated_entries=treated,
                gates=report.summary.gates,
                coverage=coverage,
            )
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
        """Atomic (a temporary file in the same folder, then rename), never through a link or
        over a hard-linked file; untouched if unchanged."""
        text = self.text()
        tree, name = file_tree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if tree.is_file(name) and tree.read_text(name, MAX_LEDGER_BYTES) == text:
            return
        tree.write_text(name, text)


def _meta_json(meta: dict[str, object]) -> str:
    """JSON that cannot end the HTML comment holding it (`<`, `>` and `&` as escapes)."""
    text = json.dumps(meta, sort_keys=True, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass
class _Draft:
    id: str
    lines: list[str] = field(default_factory=list)
    """The entry's lines outside code fences (lines inside fences are never structure)."""


def _parse_entries(block: str) -> dict[str, Entry]:
    drafts: list[_Draft] = []
    fence: str | None = None
    for line in block.split("\n"):
        if fence is not None:
            if line.strip() and set(line.strip()) == {fence[0]} and len(line.strip()) >= len(fence):
                fence = None
            continue
        if opened := _FENCE.match(line):
            fence = opened.group(1)
            continue
        if heading := _ENTRY.match(line):
            drafts.append(_Draft(heading.group(1)))
        elif drafts:
            drafts[-1].lines.append(line)
    entries: dict[str, Entry] = {}
    for draft in drafts:
        entry = _entry(draft)
        if entry is not None and draft.id not in entries:
            entries[draft.id] = entry
    return entries


def _entry(draft: _Draft) -> Entry | None:
    """An entry only when well formed: its metadata on the line right after its heading and
    exactly one status line of its own."""
    meta_match = _META.match(draft.lines[0]) if draft.lines else None
    statuses = [m for line in draft.lines if (m := _STATUS.match(line))]
    if meta_match is None or len(statuses) != 1:
        return None
    try:
        meta = EntryMeta.model_validate_json(meta_match.group(1))
        status = Status(statuses[0].group(1))
    except (ValidationError, ValueError):
        return None
    note = (statuses[0].group(2) or "").strip()
    return Entry(id=draft.id, status=status, note=note, meta=meta)


def _row_from_finding(finding: Finding, previous: Entry | None) -> dict[str, object]:
    meta = entry_meta(finding).model_dump()
    note = previous.note if previous and previous.status == finding.status else ""
    return {
        **meta,
        "id": finding.id,
        "location": finding.location,
        "status": finding.status.value,
        "note": note,
        "diff": finding.fix.diff.rstrip("\n") if finding.fix else "",
        "fix_verified": bool(finding.fix and finding.fix.verified),
        "fix_check": _failed_check(finding),
        "meta_json": _meta_json(meta),
    }


_CHECK_CHARS = 240


def _failed_check(finding: Finding) -> str:
    """Why a fix that was checked is not verified (its first failed step, first line): the
    ledger is where a reader decides what to treat next, and "not verified" alone does not say
    whether the fix broke the run or the run never got far enough to judge it."""
    fix = finding.fix
    failed = next((v for v in fix.verification if not v.ok), None) if fix else None
    if failed is None:
        return ""
    detail = failed.detail.splitlines()[0] if failed.detail else ""
    if len(detail) > _CHECK_CHARS:
        detail = detail[: _CHECK_CHARS - 1].rstrip() + "…"
    return f"{failed.step}: {detail}" if detail else failed.step
