"""The session's turns: one line in, the assistant's messages out, the state updated.

Commands are answered from the evidence in the session's report; those that need the audit
(`run`, `fix`, `rerun`, `apply`) go to the `AuditDriver` and the session waits on that audit;
`settle` says what changed once it ends. Free text goes to the `Answerer` (the LLM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from torchdoctor.agent.checklist import point_title
from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.checks.data import load_table
from torchdoctor.agent.context import Progress
from torchdoctor.agent.fixes.codemods import fixable_rules
from torchdoctor.agent.models import AuditReport, Finding, Severity, Status
from torchdoctor.agent.session.commands import (
    COMMANDS,
    Command,
    CommandError,
    DecideCommand,
    FindingsCommand,
    FixCommand,
    PlainCommand,
    Question,
    RunCommand,
    ShowCommand,
    StatusCommand,
    parse,
)
from torchdoctor.agent.session.models import (
    Block,
    CodeBlock,
    DiffBlock,
    Message,
    SessionState,
    TableBlock,
    Task,
    TextBlock,
    Waiting,
)
from torchdoctor.agent.session.ports import Answerer, AuditDriver, AuditView, SessionError
from torchdoctor.agent.session.texts import say
from torchdoctor.agent.state import ApprovalAnswer, FixDecision

Clock = Callable[[], float]


@cache
def _french_rules() -> dict[str, dict[str, str]]:
    rules: dict[str, dict[str, str]] = load_table("rules_fr.json")["rules"]
    return rules


def _title(finding: Finding, lang: str) -> str:
    if lang == "fr":
        return _french_rules().get(finding.rule, {}).get("title", finding.title)
    return finding.title


@dataclass
class Turn:
    """What one turn produced: the messages to add (the user's first) and the new state."""

    state: SessionState
    messages: list[Message]


class SessionEngine:
    def __init__(
        self, driver: AuditDriver, answerer: Answerer | None = None, clock: Clock = time.time
    ) -> None:
        self.driver = driver
        self.answerer = answerer
        self.clock = clock

    # entry points -------------------------------------------------------------------------

    def open(self, state: SessionState, audit_id: str) -> Turn:
        """A session on an existing audit: it waits on it, then shows its summary."""
        state = state.model_copy(update={"waiting": Waiting(task="open", audit_id=audit_id)})
        return self.settle(state)

    def start(self, state: SessionState, progress: Progress | None = None) -> Turn:
        """A session on new code: its first audit, with the session's choices."""
        return self._start(state, "open", None, progress, [])

    def handle(
        self,
        state: SessionState,
        line: str,
        history: list[Message],
        progress: Progress | None = None,
    ) -> Turn:
        """One user line: the user's message, then the answer (or the audit it started)."""
        state = self.settle(state).state
        said = self._message("user", [TextBlock(text=line)])
        try:
            command = parse(line)
            turn = self._dispatch(state, command, history, progress)
        except (CommandError, SessionError) as err:
            turn = Turn(state, [self._error(str(err))])
        return Turn(turn.state, [said, *turn.messages])

    def settle(self, state: SessionState) -> Turn:
        """If the audit the session waits on has ended (or reached its approval question),
        take its report and say what changed."""
        waiting = state.waiting
        if waiting is None:
            return Turn(state, [])
        view = self.driver.view(waiting.audit_id)
        if not view.ended:
            return Turn(state, [])
        lang = state.lang
        update: dict[str, object] = {"waiting": None}
        if view.state in ("failed", "cancelled") or view.report is None:
            key = "cancelled" if view.state == "cancelled" else "audit_failed"
            text = say(lang, key, audit_id=view.audit_id, state=view.state, error=view.error or "")
            return Turn(state.model_copy(update=update), [self._error(text)])
        previous = state.report
        update.update(
            audit_id=view.audit_id, report=view.report, pending=view.pending, decisions={}
        )
        settled = state.model_copy(update=update)
        blocks = self._after(waiting, view, previous, settled)
        return Turn(settled, [self._message("assistant", blocks)])

    def cancel(self, state: SessionState) -> Turn:
        """Ctrl-C: the current audit is cancelled, the session goes on."""
        if state.waiting is None:
            return Turn(state, [])
        self.driver.cancel(state.waiting.audit_id)
        return self.settle(state)

    # commands -----------------------------------------------------------------------------

    def _dispatch(
        self,
        state: SessionState,
        command: Command,
        history: list[Message],
        progress: Progress | None,
    ) -> Turn:
        lang = state.lang
        if isinstance(command, PlainCommand) and command.name == "help":
            return self._reply(state, self._help(lang))
        if isinstance(command, RunCommand):
            return self._run(state, command, progress)
        if isinstance(command, PlainCommand) and command.name == "rerun":
            return self._start(state, "rerun", None, progress, [])
        report = state.report
        if report is None:
            return self._reply(state, [TextBlock(text=say(lang, "no_report"), tone="note")])
        if isinstance(command, FindingsCommand):
            return self._reply(state, self._findings(report, command, lang))
        if isinstance(command, ShowCommand):
            return self._reply(
                state, self._show(report, self._find(report, command.finding, lang), lang)
            )
        if isinstance(command, FixCommand):
            return self._fix(state, report, self._find(report, command.finding, lang), progress)
        if isinstance(command, DecideCommand):
            return self._decide(state, command)
        if isinstance(command, StatusCommand):
            return self._status(state, report, command)
        if isinstance(command, PlainCommand) and command.name == "apply":
            return self._apply(state, progress)
        if isinstance(command, PlainCommand) and command.name == "ledger":
            text = self.driver.ledger(state.audit_id or "")
            if text is None:
                return self._reply(state, [TextBlock(text=say(lang, "no_ledger"), tone="note")])
            title = say(lang, "ledger_title")
            return self._reply(state, [CodeBlock(title=title, text=text, language="markdown")])
        assert isinstance(command, Question)
        return self._question(state, report, command.text, history)

    def _findings(self, report: AuditReport, command: FindingsCommand, lang: str) -> list[Block]:
        chosen = [
            f
            for f in report.findings
            if (command.point is None or f.checkpoint == command.point)
            and (command.severity is None or f.severity == command.severity)
            and (command.status is None or f.status == command.status)
        ]
        named = [str(v) for v in (command.point, command.severity, command.status) if v]
        filters = f" ({', '.join(named)})" if named else ""
        blocks: list[Block] = []
        if not chosen:
            blocks.append(TextBlock(text=say(lang, "no_findings", filters=filters), tone="note"))
        else:
            chosen.sort(key=lambda f: (-f.severity.rank, f.checkpoint, f.file, f.line))
            columns = [
                say(lang, f"col_{c}")
                for c in ("id", "severity", "point", "where", "title", "status")
            ]
            rows = [
                [
                    f.id,
                    f.severity.value,
                    str(f.checkpoint),
                    f.location,
                    _title(f, lang),
                    f.status.value,
                ]
                for f in chosen
            ]
            title = say(lang, "findings_title", count=len(chosen), filters=filters)
            blocks.append(TableBlock(title=title, columns=columns, rows=rows))
        return blocks + _hypotheses(report, command, filters, lang)

    def _show(self, report: AuditReport, finding: Finding, lang: str) -> list[Block]:
        head = (
            f"{finding.id} · {finding.severity.value} · {say(lang, 'col_point')} "
            f"{finding.checkpoint} ({point_title(finding.checkpoint, lang)}) · "
            f"{say(lang, 'rule')} {finding.rule} · {finding.location} · {finding.status.value}\n"
            f"{_title(finding, lang)}"
        )
        blocks: list[Block] = [TextBlock(text=head)]
        lines = [
            f"- {ev.source}{f' {ev.source_version}' if ev.source_version else ''}: {ev.message}"
            + (f" ({ev.file}:{ev.line})" if ev.file and ev.line else "")
            for ev in finding.evidence
        ]
        blocks.append(TextBlock(text=f"{say(lang, 'evidence')}:\n" + "\n".join(lines)))
        excerpt = next((ev.excerpt for ev in finding.evidence if ev.excerpt), "")
        if excerpt:
            blocks.append(CodeBlock(title=say(lang, "excerpt"), text=excerpt, language="python"))
        rule = catalogue().get(finding.rule)
        items = set(rule.items) if rule else set()
        covered = [c for c in report.coverage if c.item in items]
        if covered:
            blocks.append(
                TableBlock(
                    title=say(lang, "coverage"),
                    columns=["item", "verdict", "how"],
                    rows=[[c.item, c.verdict, c.how] for c in covered],
                )
            )
        why = _french_rules().get(finding.rule, {}).get("message", "") if lang == "fr" else ""
        if rule is not None and (why or rule.doc):
            blocks.append(TextBlock(text=f"{say(lang, 'why')}: {why or rule.doc.strip()}"))
        if finding.fix is not None:
            blocks += self._fix_blocks(finding, lang)
        return blocks

    def _fix_blocks(self, finding: Finding, lang: str) -> list[Block]:
        assert finding.fix is not None
        state = say(lang, "verified" if finding.fix.verified else "not_verified")
        blocks: list[Block] = [
            DiffBlock(title=say(lang, "fix_diff", state=state), diff=finding.fix.diff)
        ]
        if finding.fix.verification:
            blocks.append(
                TableBlock(
                    title=say(lang, "verification"),
                    columns=[say(lang, "step"), say(lang, "ok"), say(lang, "detail")],
                    rows=[
                        [v.step, "yes" if v.ok else "no", v.detail]
                        for v in finding.fix.verification
                    ],
                )
            )
        return blocks

    def _run(self, state: SessionState, command: RunCommand, progress: Progress | None) -> Turn:
        steps = command.steps or state.choices.steps
        choices = state.choices.model_copy(update={"run": [command.command], "steps": steps})
        state = state.model_copy(update={"choices": choices})
        return self._start(state, "run", None, progress, [])

    def _fix(
        self, state: SessionState, report: AuditReport, finding: Finding, progress: Progress | None
    ) -> Turn:
        lang = state.lang
        if finding.fix is None and finding.rule not in fixable_rules():
            return self._reply(
                state,
                [
                    TextBlock(
                        text=say(lang, "no_fix", ref=finding.id, rule=finding.rule), tone="note"
                    )
                ],
            )
        if finding.fix is not None and state.choices.fix:
            return self._reply(state, self._fix_answer(state, finding))
        choices = state.choices.model_copy(update={"fix": True})
        state = state.model_copy(update={"choices": choices})
        notes: list[Block] = []
        if not choices.run:
            notes.append(TextBlock(text=say(lang, "fix_needs_run"), tone="note"))
        return self._start(state, "fix", finding.id, progress, notes)

    def _fix_answer(self, state: SessionState, finding: Finding) -> list[Block]:
        lang = state.lang
        if finding.fix is None:
            return [
                TextBlock(text=say(lang, "no_fix", ref=finding.id, rule=finding.rule), tone="note")
            ]
        blocks = self._fix_blocks(finding, lang)
        offered = state.pending is not None and any(
            c.finding_id == finding.id for c in state.pending.changes
        )
        if offered:
            blocks.append(TextBlock(text=say(lang, "offered", ref=finding.id)))
        else:
            hint = "fix_needs_run" if not state.choices.run else "not_offered"
            blocks.append(TextBlock(text=say(lang, hint), tone="note"))
        return blocks

    def _decide(self, state: SessionState, command: DecideCommand) -> Turn:
        lang = state.lang
        if state.pending is None or not state.pending.changes:
            return self._reply(state, [TextBlock(text=say(lang, "nothing_pending"), tone="note")])
        offered = [c.finding_id for c in state.pending.changes]
        if command.finding.lower() == "all":
            chosen = offered
        else:
            ref = _normal(command.finding)
            chosen = [fid for fid in offered if _normal(fid).startswith(ref)]
            if len(chosen) != 1:
                raise SessionError(
                    say(lang, "not_in_request", ref=command.finding, ids=", ".join(offered))
                )
        approve = command.name == "approve"
        decisions = {**state.decisions, **dict.fromkeys(chosen, approve)}
        state = state.model_copy(update={"decisions": decisions})
        approved = sum(decisions.values())
        text = say(
            lang,
            "decided",
            verb=say(lang, "approved_verb" if approve else "rejected_verb"),
            ids=", ".join(chosen),
            approved=approved,
            rejected=len(decisions) - approved,
        )
        return self._reply(state, [TextBlock(text=text)])

    def _apply(self, state: SessionState, progress: Progress | None) -> Turn:
        lang = state.lang
        if state.pending is None or state.audit_id is None:
            return self._reply(state, [TextBlock(text=say(lang, "nothing_pending"), tone="note")])
        if not any(state.decisions.values()):
            return self._reply(state, [TextBlock(text=say(lang, "nothing_approved"), tone="note")])
        answer = ApprovalAnswer(
            decisions=[
                FixDecision(
                    finding_id=c.finding_id,
                    approve=state.decisions.get(c.finding_id, False),
                    comment="chat session",
                )
                for c in state.pending.changes
            ]
        )
        audit_id = state.audit_id
        approved = len(answer.approved())
        waiting = Waiting(task="apply", audit_id=audit_id, approved=sorted(answer.approved()))
        started = self._message(
            "assistant",
            [TextBlock(text=say(lang, "apply_started", count=approved, audit_id=audit_id))],
        )
        self.driver.answer(audit_id, answer, progress)
        turn = self.settle(state.model_copy(update={"waiting": waiting}))
        return Turn(turn.state, [started, *turn.messages])

    def _status(self, state: SessionState, report: AuditReport, command: StatusCommand) -> Turn:
        lang = state.lang
        finding = self._find(report, command.finding, lang)
        updated = self.driver.set_status(
            state.audit_id or "", report, finding, Status(command.status), command.reason, lang
        )
        state = state.model_copy(update={"report": updated})
        text = say(lang, "status_set", ref=finding.id, status=command.status, reason=command.reason)
        return self._reply(state, [TextBlock(text=text)])

    def _question(
        self, state: SessionState, report: AuditReport, question: str, history: list[Message]
    ) -> Turn:
        answer = self.answerer(question, report, history, state.lang) if self.answerer else None
        if answer is None:
            answer = [TextBlock(text=say(state.lang, "no_llm"), tone="note")]
        return self._reply(state, answer)

    # audits -------------------------------------------------------------------------------

    def _start(
        self,
        state: SessionState,
        task: Task,
        finding_id: str | None,
        progress: Progress | None,
        notes: list[Block],
    ) -> Turn:
        if state.waiting is not None:
            text = say(state.lang, "busy", audit_id=state.waiting.audit_id, task=state.waiting.task)
            raise SessionError(text)
        audit_id = self.driver.start(state.choices, progress)
        lang = state.lang
        if task == "run":
            text = say(
                lang,
                "run_started",
                command=state.choices.run[0],
                steps=state.choices.steps,
                audit_id=audit_id,
            )
        elif task == "fix":
            text = say(lang, "fix_started", audit_id=audit_id)
        else:
            text = say(lang, "started", audit_id=audit_id, task=task)
        started = self._message("assistant", [*notes, TextBlock(text=text)])
        waiting = Waiting(task=task, audit_id=audit_id, finding_id=finding_id)
        turn = self.settle(state.model_copy(update={"waiting": waiting}))
        return Turn(turn.state, [started, *turn.messages])

    def _after(
        self, waiting: Waiting, view: AuditView, previous: AuditReport | None, state: SessionState
    ) -> list[Block]:
        """What to say once the awaited audit ended."""
        lang = state.lang
        report = view.report
        assert report is not None
        if waiting.task == "fix" and waiting.finding_id is not None:
            finding = next((f for f in report.findings if f.id == waiting.finding_id), None)
            if finding is not None:
                return self._fix_answer(state, finding)
        if waiting.task == "apply":
            if view.refused:
                return [
                    TextBlock(text=say(lang, "apply_refused", reason=view.refused), tone="error")
                ]
            return [TextBlock(text=say(lang, "applied", ids=", ".join(waiting.approved) or "-"))]
        blocks: list[Block] = [TextBlock(text=_summary(report, lang))]
        if previous is not None and waiting.task in ("run", "rerun"):
            blocks += _changes(previous, report, lang)
        if state.pending is not None and state.pending.changes:
            ids = " ".join(c.finding_id for c in state.pending.changes)
            blocks.append(TextBlock(text=say(lang, "offered", ref=ids.split()[0]) + f" ({ids})"))
        return blocks

    # helpers ------------------------------------------------------------------------------

    def _find(self, report: AuditReport, ref: str, lang: str) -> Finding:
        wanted = _normal(ref)
        matches = [f for f in report.findings if _normal(f.id).startswith(wanted)] if wanted else []
        exact = [f for f in matches if _normal(f.id) == wanted]
        if exact or len(matches) == 1:
            return (exact or matches)[0]
        if not matches:
            raise SessionError(say(lang, "no_finding", ref=ref))
        raise SessionError(
            say(lang, "ambiguous", ref=ref, ids=", ".join(f.id for f in matches[:5]))
        )

    def _help(self, lang: str) -> list[Block]:
        usage = {
            "findings": "findings [point] [severity] [status]",
            "show": "show ID",
            "run": 'run "python train.py" [--steps N]',
            "fix": "fix ID",
            "approve": "approve ID|all",
            "reject": "reject ID|all",
            "apply": "apply",
            "status": 'status ID wont-fix|needs-human "reason"',
            "ledger": "ledger",
            "rerun": "rerun",
            "help": "help",
        }
        rows = [[usage[name], say(lang, f"help_{name}")] for name in COMMANDS]
        return [
            TableBlock(
                title=say(lang, "help_title"),
                columns=[say(lang, "command"), say(lang, "what")],
                rows=rows,
            ),
            TextBlock(text=say(lang, "help_question"), tone="note"),
        ]

    def _message(self, role: str, blocks: list[Block]) -> Message:
        return Message(role=role, blocks=blocks, created_at=self.clock())

    def _error(self, text: str) -> Message:
        return self._message("assistant", [TextBlock(text=text, tone="error")])

    def _reply(self, state: SessionState, blocks: list[Block]) -> Turn:
        return Turn(state, [self._message("assistant", blocks)])


def _normal(ref: str) -> str:
    text = ref.strip().upper()
    return text if text.startswith("TD-") or not text else f"TD-{text}"


def _hypotheses(
    report: AuditReport, command: FindingsCommand, filters: str, lang: str
) -> list[Block]:
    """The model's unverified claims, apart from the findings (they have no status, so a
    status filter shows none)."""
    chosen = [
        h
        for h in report.hypotheses
        if command.status is None
        and (command.point is None or h.checkpoint == command.point)
        and (command.severity is None or h.severity == command.severity)
    ]
    if not chosen:
        return []
    columns = [say(lang, f"col_{c}") for c in ("id", "claimed", "point", "where", "title", "model")]
    rows = [
        [
            h.id,
            h.severity.value,
            str(h.checkpoint),
            f"{h.file}:{h.line}",
            ": ".join(filter(None, (h.title, h.explanation))),
            h.source,
        ]
        for h in chosen
    ]
    title = say(lang, "hypotheses_title", count=len(chosen), filters=filters)
    return [TableBlock(title=title, columns=columns, rows=rows)]


def _summary(report: AuditReport, lang: str) -> str:
    by_severity = ", ".join(
        f"{sev.value} {report.summary.by_severity[sev.value]}"
        for sev in Severity
        if report.summary.by_severity.get(sev.value)
    )
    said = say(lang, "summary", total=report.summary.total, by_severity=by_severity or "-")
    if report.hypotheses:
        said += " " + say(lang, "summary_hypotheses", count=len(report.hypotheses))
    return said


def _changes(previous: AuditReport, current: AuditReport, lang: str) -> list[Block]:
    """Findings new, gone, or with another status than in the previous report."""
    before = {f.id: f for f in previous.findings}
    after = {f.id: f for f in current.findings}
    rows: list[list[str]] = []
    for fid, finding in after.items():
        old = before.get(fid)
        if old is None:
            rows.append([say(lang, "new"), fid, finding.location, _title(finding, lang)])
        elif old.status != finding.status:
            change = say(lang, "changed", before=old.status.value, after=finding.status.value)
            rows.append([change, fid, finding.location, _title(finding, lang)])
    for fid, finding in before.items():
        if fid not in after:
            rows.append([say(lang, "gone"), fid, finding.location, _title(finding, lang)])
    if not rows:
        return [TextBlock(text=say(lang, "no_change", count=len(after)), tone="note")]
    columns = [
        say(lang, "change"),
        say(lang, "col_id"),
        say(lang, "col_where"),
        say(lang, "col_title"),
    ]
    return [TableBlock(title=say(lang, "changes_title"), columns=columns, rows=rows)]
