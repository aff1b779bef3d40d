"""Answering the audit's approval question from a terminal: each verified diff shown, then
yes / no / all / quit. The API and the chat answer the same question with the same model."""

from __future__ import annotations

from collections.abc import Callable

from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest, FixDecision

NO_TERMINAL = "no terminal to ask in: pass --yes to apply the verified fixes without asking"
_CHOICES = {"y": "yes", "yes": "yes", "n": "no", "no": "no", "a": "all", "all": "all"}
_CHOICES |= {"q": "quit", "quit": "quit"}


def approve_all(request: ApprovalRequest) -> ApprovalAnswer:
    """`--yes`: every verified diff the gate lets through."""
    return ApprovalAnswer(
        decisions=[
            FixDecision(finding_id=c.finding_id, approve=True, comment="--yes")
            for c in request.changes
        ]
    )


def refuse_without_terminal(request: ApprovalRequest) -> ApprovalAnswer:
    return ApprovalAnswer(refused=NO_TERMINAL)


def ask_in_terminal(
    ask: Callable[[str], str], show: Callable[[str], None]
) -> Callable[[ApprovalRequest], ApprovalAnswer]:
    """An approver that shows each diff with `show` and reads the answer with `ask`."""

    def approver(request: ApprovalRequest) -> ApprovalAnswer:
        decisions: list[FixDecision] = []
        remaining = list(request.changes)
        while remaining:
            change = remaining[0]
            show(
                f"\n{change.finding_id} {change.rule} ({change.severity.value}) at "
                f"{change.file}:{change.line}: {change.title}\n{change.diff}"
            )
            choice = _CHOICES.get(
                ask(f"apply this fix? [y]es/[n]o/[a]ll/[q]uit ({len(remaining)} left) ")
                .strip()
                .lower()
            )
            if choice is None:
                show("answer y, n, a or q")
                continue
            if choice == "all":
                decisions += [
                    FixDecision(finding_id=c.finding_id, approve=True, comment="all")
                    for c in remaining
                ]
                break
            if choice == "quit":
                decisions += [
                    FixDecision(finding_id=c.finding_id, approve=False, comment="quit")
                    for c in remaining
                ]
                break
            decisions.append(FixDecision(finding_id=change.finding_id, approve=choice == "yes"))
            remaining.pop(0)
        return ApprovalAnswer(decisions=decisions)

    return approver
