"""Running a generated artifact in the sandbox, on a copy of the audited code with the
artifact written into it: nothing reaches the user's tree until approval. Jobs name a module;
the sandbox backend resolves the interpreter and torchdoctor's import path (the project's on
this host, the image's under docker), as for the harness's jobs."""

from __future__ import annotations

import re
from pathlib import Path

from torchdoctor.agent.artifacts.models import CheckOutcome
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.workspace import Workspace
from torchdoctor.sandbox.models import Job, Limits, RunResult
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.workspace import WorkspaceError, remove_workspace, stage_workspace

LIMITS = Limits(wall_s=240, cpu_s=600, memory_mb=8192, disk_mb=1024)
_PROGRESS = re.compile(r"^(\S+?)::(\w+) (PASSED|FAILED|ERROR)\b")
_SUMMARY = re.compile(r"^(?:FAILED|ERROR) (\S+?)::(\w+) - (.*)$")


class SandboxedRun:
    """One sandbox run of a command on a copy of the workspace plus the generated files."""

    def __init__(self, sandbox: Sandbox, workspace: Workspace) -> None:
        self.sandbox = sandbox
        self.workspace = workspace

    def run(self, files: dict[str, str], module: str, args: list[str]) -> RunResult | str:
        """The result of `python -m module args` on the copy, or why it could not start (a
        sentence). The copy is the working directory, so its own modules import."""
        source = self.workspace.root if self.workspace.kind == "folder" else self.workspace.target
        try:
            copy = stage_workspace(source)
        except WorkspaceError as err:
            return f"could not copy the workspace: {one_line(str(err))}"
        try:
            for relative, text in files.items():
                path = copy / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            job = Job(
                workspace=copy,
                module=module,
                args=args,
                # plugins installed next to torchdoctor are not the project's: not loaded
                env={
                    "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                    "COLUMNS": "400",  # pytest cuts the summary's messages at the width
                },
                limits=LIMITS,
            )
            return self.sandbox.run(job)
        finally:
            remove_workspace(copy)

    def pytest(
        self, path: str, text: str, beside: dict[str, str] | None = None
    ) -> list[CheckOutcome] | str:
        """Each test of the file `text` (written at `path`) with its outcome, or why the run
        gave none; `beside`: more files the test needs. The project's conftest files are
        not loaded: the verdict is the file's. A run stopped by the time limit still reports
        the tests that finished before it."""
        args = [path, "-v", "-rfE", "-p", "no:cacheprovider", "--noconftest"]
        result = self.run({**(beside or {}), path: text}, "pytest", args)
        if isinstance(result, str):
            return result
        outcomes = parse_pytest_summary(result.stdout, path)
        if not outcomes:
            tail = one_line((result.stdout + result.stderr)[-400:])
            return f"pytest reported no test ({result.outcome}: {tail})"
        return outcomes


def parse_pytest_summary(stdout: str, path: str) -> list[CheckOutcome]:
    """`-v`'s line per finished test in the file at `path`, with the failure's message from
    the short summary (a test reported twice, say PASSED then ERROR at teardown, failed)."""
    passed: dict[str, bool] = {}
    details: dict[str, str] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if (match := _PROGRESS.match(line)) and Path(match[1]).as_posix() == path:
            passed[match[2]] = passed.get(match[2], True) and match[3] == "PASSED"
        elif (match := _SUMMARY.match(line)) and Path(match[1]).as_posix() == path:
            details[match[2]] = one_line(match[3])[:300]
    return [
        CheckOutcome(name=name, passed=ok, detail="" if ok else details.get(name, "failed"))
        for name, ok in passed.items()
    ]
