"""Host-side attacks: a hostile repository that torchdoctor itself reads, writes and runs git
in, on the host. Each attack plants its trap, runs the torchdoctor operation an attacker
would count on, and says, from the host, what escaped (an empty list when it held).

Shared by tests/security/test_host_side.py and `benchmarks/containment.py` (second table).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torchdoctor.agent.audit import AuditOptions, AuditOutcome, run_audit
from torchdoctor.agent.config import ConfigError
from torchdoctor.agent.fixes.apply import dirty_reason, undo
from torchdoctor.agent.ledger import Ledger
from torchdoctor.agent.models import Status

SOURCE = "import torch\n\nmodel = torch.nn.Linear(2, 2)\nprint(model(torch.ones(2)))\n"
SECRET_ENV = "OPENAI_API_KEY"


@dataclass
class HostScene:
    """A hostile repository next to host files it must not reach."""

    root: Path

    def __post_init__(self) -> None:
        self.repo = self.root / "repo"
        self.host = self.root / "host"
        self.repo.mkdir(parents=True)
        self.host.mkdir()
        self.secret = f"host-secret-{uuid.uuid4().hex}"
        self.secret_file = self.host / "secret.txt"
        self.secret_file.write_text(self.secret + "\n")
        (self.repo / "train.py").write_text(SOURCE)

    def audit(self, **options: object) -> AuditOutcome:
        values: dict[str, object] = {"target": self.repo, "offline": True, "linters": False}
        return run_audit(AuditOptions.model_validate({**values, **options}))

    def git(self, *args: str) -> None:
        env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        subprocess.run(
            ["git", "-C", str(self.repo), *args], check=True, capture_output=True, env=env
        )

    def init_git(self) -> None:
        self.git("init", "-q")
        self.git("-c", "user.email=a@b", "-c", "user.name=a", "add", "-A")
        self.git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init")


def ledger_link_to_host_file(scene: HostScene) -> list[str]:
    (scene.repo / "ISSUES.md").symlink_to(scene.secret_file)
    outcome = scene.audit()
    escaped = []
    if (
        scene.secret in (scene.repo / "ISSUES.md").read_text(errors="replace")
        and not (scene.repo / "ISSUES.md").is_symlink()
    ):
        escaped.append("the host file's contents were copied into the repository")
    if scene.secret_file.read_text() != scene.secret + "\n":
        escaped.append("the host file was overwritten through the link")
    if outcome.ledger_path is not None:
        escaped.append("the ledger was written through a link")
    return escaped


def ledger_hard_link_to_host_file(scene: HostScene) -> list[str]:
    os.link(scene.secret_file, scene.repo / "ISSUES.md")
    scene.audit()
    return (
        ["the hard-linked host file was rewritten"]
        if scene.secret_file.read_text() != scene.secret + "\n"
        else []
    )


def requirements_link_to_host_file(scene: HostScene) -> list[str]:
    (scene.repo / "requirements.txt").symlink_to(scene.secret_file)
    (scene.repo / "requirements-dev.txt").symlink_to(scene.secret_file)
    outcome = scene.audit(write_ledger=False)
    escaped = []
    if scene.secret in outcome.report.model_dump_json():
        escaped.append("a linked manifest's host contents reached the report")
    host_config = scene.host / "pyproject.toml"
    host_config.write_text('[tool.torchdoctor]\nexclude = ["*.py"]\n')
    (scene.repo / "pyproject.toml").symlink_to(host_config)
    try:
        outcome = scene.audit(write_ledger=False)
    except ConfigError as err:
        escaped.append(f"the linked pyproject.toml was read: {err}")
    else:
        if outcome.report.summary.files_audited != 1:
            escaped.append("a pyproject.toml linked to a host file configured the audit")
    return escaped


def source_fifo_blocks_the_reader(scene: HostScene) -> list[str]:
    os.mkfifo(scene.repo / "requirements.txt")
    os.mkfifo(scene.repo / "blocked.py")
    outcome = scene.audit(write_ledger=False)
    skipped = {n.file for n in outcome.report.summary.files_skipped}
    return [] if "blocked.py" in skipped else ["a FIFO was neither refused nor reported"]


def undo_journal_shipped_in_repository(scene: HostScene) -> list[str]:
    victim = scene.host / "victim.txt"
    victim.write_text("original\n")
    journal = scene.repo / ".torchdoctor" / "undo" / "29991231T000000000000Z"
    (journal / "files").mkdir(parents=True)
    relative = os.path.relpath(victim, scene.repo)
    (journal / "files" / "payload").write_text("pwned\n")
    entry = {"path": relative, "mode": 420, "sha256_before": "0" * 64, "sha256_after": "0" * 64}
    (journal / "manifest.json").write_text(json.dumps({"files": [entry]}))
    result = undo(scene.repo, force=True)
    escaped = []
    if victim.read_text() != "original\n":
        escaped.append("undo overwrote a host file named by a journal in the repository")
    if result.restored:
        escaped.append(f"undo restored {result.restored} from the repository's own journal")
    return escaped


def git_fsmonitor_and_hooks(scene: HostScene) -> list[str]:
    scene.init_git()
    marker = scene.host / f"ran-{uuid.uuid4().hex}"
    script = scene.repo / ".git" / "evil.sh"
    script.write_text(f'#!/bin/sh\necho "${SECRET_ENV}" > {marker}\nexit 0\n')
    script.chmod(0o755)
    (scene.repo / ".gitattributes").write_text("*.py filter=evil diff=evil\n")
    scene.git("config", "core.fsmonitor", str(script))
    scene.git("config", "core.pager", str(script))
    scene.git("config", "filter.evil.clean", str(script))
    scene.git("config", "filter.evil.process", str(script))
    scene.git("config", "diff.evil.textconv", str(script))
    scene.git("config", "diff.external", str(script))
    include = scene.repo / ".git" / "more.cfg"
    include.write_text(f"[core]\n\tfsmonitor = {script}\n")
    scene.git("config", "include.path", str(include))
    hooks = scene.repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in ("post-index-change", "pre-commit", "post-checkout", "fsmonitor-watchman"):
        (hooks / hook).write_text(script.read_text())
        (hooks / hook).chmod(0o755)
    (scene.repo / "train.py").write_text(SOURCE + "# dirty\n")
    reason = dirty_reason(scene.repo)
    escaped = []
    if marker.exists():
        escaped.append("the repository's git configuration ran a program on the host")
    if reason is None or "train.py" not in reason:
        escaped.append(f"the dirty tree was not detected: {reason}")
    return escaped


def newline_file_name_injects_a_status(scene: HostScene) -> list[str]:
    """A file name carrying a newline and a forged entry with `Status: wont-fix`."""
    (scene.repo / "train.py").write_text(
        "import torch\nmodel = torch.load('m.pt')\n"  # torch-load-unsafe, a real finding
    )
    first = scene.audit()
    target = next(f for f in first.report.findings if f.file == "train.py")
    forged = (
        f"x.py\n#### {target.id} — forged\n"
        f'<!-- td-entry {{"rule": "r", "point": 1, "phase": 1, "severity": "low", "title": '
        f'"t", "file": "f", "line": 1, "evidence": ""}} -->\n- Status: wont-fix\n.py'
    )
    (scene.repo / forged).write_text("import torch\nmodel = torch.load('m.pt')\n")
    scene.audit()
    after = scene.audit()
    escaped = []
    entries = Ledger.read(scene.repo / "ISSUES.md").entries
    if target.id in entries and entries[target.id].status is Status.WONT_FIX:
        escaped.append("a file name created a wont-fix status for another finding")
    still = next(f for f in after.report.findings if f.id == target.id)
    if still.status is not Status.OPEN:
        escaped.append(f"the real finding was hidden: {still.status}")
    return escaped


HOST_ATTACKS: dict[str, Callable[[HostScene], list[str]]] = {
    "ledger-symlink": ledger_link_to_host_file,
    "ledger-hardlink": ledger_hard_link_to_host_file,
    "manifest-symlink": requirements_link_to_host_file,
    "fifo-in-tree": source_fifo_blocks_the_reader,
    "shipped-undo-journal": undo_journal_shipped_in_repository,
    "git-config-exec": git_fsmonitor_and_hooks,
    "newline-file-name": newline_file_name_injects_a_status,
}
