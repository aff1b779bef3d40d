"""The command line as a person meets it (issue 13, items 3, 5 and 10): `--version`, `-h`,
"did you mean", whole rule ids, every rule id in one namespace, the concise format and
progress lines. In-process through typer's runner (the same app object the console script
calls); the audits are real, offline, on small files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchdoctor import __version__
from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.cli import app
from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.report.concise import render_concise

RUNNER = CliRunner()
BUGGY = """\
import torch
from torch import nn

model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x in torch.randn(10, 8, 4):
    loss = model(x).mean()
    loss.backward()
    optimizer.step()
state = torch.load("ckpt.pt")
"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def buggy(tmp_path: Path) -> Path:
    target = tmp_path / "train.py"
    target.write_text(BUGGY)
    return target


def test_version_and_short_help() -> None:
    code, out, _ = invoke("--version")
    assert (code, out.strip()) == (0, f"torchdoctor {__version__}")
    code, out, _ = invoke("-h")
    assert code == 0 and "audit" in out and "rules" in out
    code, out, _ = invoke("audit", "-h")
    assert code == 0 and "--format" in out and "--quiet" in out


def test_mistyped_command_and_rule_id_get_suggestions() -> None:
    code, _, err = invoke("audt", "x.py")
    assert code == 2 and "Did you mean 'audit'" in err
    code, _, err = invoke("rules", "zero-grad-mising")
    assert code == 2 and "did you mean zero-grad-missing" in err


def test_rules_lists_native_probe_and_peer_rules_with_whole_ids() -> None:
    code, out, _ = invoke("rules")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines()[1:]}
    assert listed == set(catalogue())
    longest = max(catalogue(), key=len)
    assert any(line.startswith(longest + " ") for line in out.splitlines())
    assert "…" not in out
    kinds = {r.kind for r in catalogue().values()}
    assert kinds == {"native", "probe", "peer"}
    code, out, _ = invoke("rules", "--format", "json")
    assert {r["id"] for r in json.loads(out)} == set(catalogue())


def test_a_peer_rule_is_explained_with_its_tools_text_and_a_link() -> None:
    code, out, _ = invoke("rules", "bandit-b102")
    assert code == 0
    assert "exec" in out and "https://bandit.readthedocs.io/" in out
    assert "--ignore bandit" in out
    code, out, _ = invoke("rules", "probe-nondeterministic")
    assert code == 0 and "seed" in out


@pytest.mark.parametrize("option", ["--select", "--ignore"])
def test_unknown_rule_id_is_a_usage_error_with_the_closest_ids(buggy: Path, option: str) -> None:
    code, out, err = invoke("audit", str(buggy), "--no-ledger", option, "zero-grad-mising")
    assert code == 2 and out == ""
    assert "zero-grad-missing" in err and "Traceback" not in err


def test_unknown_rule_id_in_project_config_is_a_usage_error(buggy: Path) -> None:
    (buggy.parent / "pyproject.toml").write_text('[tool.torchdoctor]\nignore = ["bandit-b9999"]\n')
    code, _, err = invoke("audit", str(buggy), "--no-ledger")
    assert code == 2 and "[tool.torchdoctor]" in err and "bandit-b9999" in err


def test_known_ids_of_every_kind_and_whole_tools_are_accepted(buggy: Path) -> None:
    code, _, err = invoke(
        "audit", str(buggy), "--no-ledger", "-q",
        "--ignore", "bandit", "--ignore", "torchfix-tor102", "--ignore", "probe-nan",
        "--ignore", "pip-audit-pysec-2024-1", "--select", "3",
    )  # fmt: skip
    assert code == 0, err


def test_concise_format_is_one_ruff_like_line_per_open_finding(buggy: Path) -> None:
    code, out, _ = invoke("audit", str(buggy), "--no-ledger", "-q", "--format", "concise")
    assert code == 0
    lines = out.splitlines()
    assert lines, "the buggy script has findings"
    pattern = re.compile(rf"{re.escape(str(buggy))}:(\d+):(\d+): ([a-z0-9-]+) \[(\w+)\] .+")
    parsed = [pattern.fullmatch(line) for line in lines]
    assert all(parsed), lines
    rules = {(m.group(3), int(m.group(1))) for m in parsed if m}
    assert ("zero-grad-missing", 6) in rules or any(r == "zero-grad-missing" for r, _ in rules)
    load = next(m for m in parsed if m and m.group(3) == "torch-load-unsafe")
    assert (load.group(1), load.group(2)) == ("10", "9"), "the call's own line and column"


def test_concise_lines_are_sorted_and_text_from_the_code_reaches_the_terminal_inert(
    tmp_path: Path,
) -> None:
    for name in ("b.py", "a.py"):
        (tmp_path / name).write_text(BUGGY)
    code, out, _ = invoke("audit", str(tmp_path), "--no-ledger", "-q", "--format", "concise")
    assert code == 0
    keys = [(line.split(":")[0], int(line.split(":")[1])) for line in out.splitlines()]
    assert keys == sorted(keys) and {k[0] for k in keys} == {f"{tmp_path}/{n}.py" for n in "ab"}
    code, out, _ = invoke("audit", str(tmp_path), "--no-ledger", "-q", "--format", "json")
    report = AuditReport.model_validate_json(out)
    hostile = "x\x1b]52;c;ZXZpbA==\x07\x1b[2J\nmore"
    first = report.findings[0]
    report.findings[0] = first.model_copy(update={"title": hostile, "file": hostile})
    rendered = render_concise(report)
    assert "\x1b" not in rendered and "\x07" not in rendered
    assert len(rendered.splitlines()) == len(keys)


def test_concise_paths_open_from_the_working_folder_for_one_file_or_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pre-commit passes file names relative to the repository and `--force-exclude` (one
    file audited as a selection once printed `a.py/a.py`)."""
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text(BUGGY)
    monkeypatch.chdir(tmp_path)
    for arguments, files in (
        (["a.py", "--force-exclude"], {"a.py"}),
        (["a.py", "b.py"], {"a.py", "b.py"}),
    ):
        code, out, _ = invoke("audit", *arguments, "--no-ledger", "-q", "--format", "concise")
        assert code == 0
        assert {line.split(":")[0] for line in out.splitlines()} == files, out


def test_progress_is_plain_lines_on_stderr_off_a_terminal_and_silenced_by_quiet(
    buggy: Path,
) -> None:
    code, out, err = invoke("audit", str(buggy), "--no-ledger", "--format", "json")
    assert code == 0
    json.loads(out)  # stdout holds the report only
    progress = [line for line in err.splitlines() if line.startswith("torchdoctor [")]
    assert any("ingest" in line for line in progress)
    assert any("phase 1" in line for line in progress)
    assert any("finalize" in line for line in progress)
    assert "\x1b[" not in err, "no terminal control codes off a terminal"
    code, _, err = invoke("audit", str(buggy), "--no-ledger", "--format", "json", "--quiet")
    assert code == 0 and not [line for line in err.splitlines() if line.startswith("torchdoctor [")]


def test_peer_findings_are_silenced_inline_by_id_by_tool_and_by_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHDOCTOR_LINTERS", "1")
    target = tmp_path / "tool.py"
    target.write_text(
        "import sys\n\n"
        "exec(sys.argv[1])\n"
        "exec(sys.argv[2])  # torchdoctor: ignore[bandit-b102]\n"
        "exec(sys.argv[3])  # torchdoctor: ignore[bandit]\n"
    )

    def bandit_lines(*extra: str) -> list[int]:
        # B102 (exec) is not on the curated peer list: --peers all shows it as a finding
        args = ("--no-ledger", "-q", "-f", "json", "--peers", "all", *extra)
        code, out, err = invoke("audit", str(target), *args)
        assert code == 0, err
        findings = json.loads(out)["findings"]
        return sorted(f["line"] for f in findings if f["rule"] == "bandit-b102")

    assert bandit_lines() == [3]
    assert bandit_lines("--ignore", "bandit") == []
    (tmp_path / "pyproject.toml").write_text('[tool.torchdoctor]\nignore = ["bandit-b102"]\n')
    assert bandit_lines() == []


def test_plain_progress_lines_name_runs_and_fixes() -> None:
    import io

    from torchdoctor.agent.progress import PlainLines

    stream = io.StringIO()
    lines = PlainLines(stream)
    lines({"event": "run", "message": "`python train.py` under the probes (20 steps)"})
    lines({"event": "fix", "message": "zero-grad-missing: verified"})
    lines({"event": "unheard-of"})
    lines({"no": "event"})
    said = stream.getvalue().splitlines()
    assert len(said) == 2
    assert said[0].endswith("run: `python train.py` under the probes (20 steps)")
    assert said[1].endswith("fix: zero-grad-missing: verified")


def test_probe_depth_is_cheap_or_full_and_said_in_help(buggy: Path) -> None:
    code, out, _ = invoke("audit", "-h")
    assert code == 0 and "--probes" in out and "cheap" in out
    code, _, err = invoke("audit", str(buggy), "--probes", "quick")
    assert code == 2 and "'quick' is not one of" in " ".join(err.split())
