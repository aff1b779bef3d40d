"""The ML test suite as an artifact: rendered, run in the sandbox, the failing tests dropped,
the rest run again and offered only when they all pass."""

from __future__ import annotations

from torchdoctor.agent.artifacts.models import Artifact, CheckOutcome, ModelTarget
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.target import NoTarget
from torchdoctor.agent.artifacts.testsuite import TEST_NAMES, render_tests, suite_path

ITEMS = ["5.2", "5.3"]
UNFINISHED = "did not finish within the time limit"


def ml_tests_artifact(
    target: ModelTarget | NoTarget, runner: SandboxedRun, paths: list[str]
) -> Artifact:
    if isinstance(target, NoTarget):
        return Artifact(kind="tests", state="not-checked", items=ITEMS, reason=target.reason)
    path = suite_path(target, paths)
    text = render_tests(target)
    first = runner.pytest(path, text)
    if isinstance(first, str):
        return Artifact(kind="tests", state="not-checked", items=ITEMS, reason=first, path=path)
    finished = {o.name for o in first}
    unfinished = [name for name in TEST_NAMES if name not in finished]
    first += [CheckOutcome(name=name, passed=False, detail=UNFINISHED) for name in unfinished]
    passing = tuple(o.name for o in first if o.passed)
    failing = [o for o in first if not o.passed]
    if not passing:
        return _failed(path, text, first, "none of the generated tests passes on this code")
    if failing:
        text = render_tests(target, passing)
        again = runner.pytest(path, text)
        if isinstance(again, str) or not all(o.passed for o in again):
            return _failed(path, text, first, "the passing tests did not pass again on their own")
    reason = f"{len(passing)} ML test(s) for {target.class_name} pass in the sandbox"
    failed = [o.name for o in failing if o.name not in unfinished]
    if failed:
        reason += (
            f"; {len(failed)} left out because they fail on the current code "
            f"({', '.join(failed)}): see the findings"
        )
    if unfinished:
        # a slow model on a busy CPU, not a defect of the code: said apart from the failures
        reason += (
            f"; {len(unfinished)} left out because they did not finish within the sandbox's "
            f"time limit ({', '.join(unfinished)})"
        )
    return Artifact(
        kind="tests",
        state="offered",
        items=ITEMS,
        reason=reason,
        path=path,
        content=text,
        checks=first,
    )


def _failed(path: str, text: str, checks: list[CheckOutcome], reason: str) -> Artifact:
    return Artifact(
        kind="tests",
        state="failed",
        items=ITEMS,
        reason=reason,
        path=path,
        content=text,
        checks=checks,
    )
