"""Several paths on the command line, and where the configuration comes from (as ruff does it:
the nearest pyproject.toml with [tool.torchdoctor], or `--config FILE`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO
from torchdoctor.agent.config import ConfigError, RunBudget, discover_config, load_project_config
from torchdoctor.agent.harness import HarnessCall, harness_arguments
from torchdoctor.agent.workspace import InputError, common_root, load_paths

BUGGY = (EXAMPLES / "train_buggy.py").read_text(encoding="utf-8")


def torchdoctor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "torchdoctor", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """project/pyproject.toml configures torchdoctor; code sits two folders below it."""
    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "gen").mkdir()
    (root / "tools").mkdir()
    (root / "pyproject.toml").write_text(
        '[project]\nname = "p"\n\n[tool.torchdoctor]\nexclude = ["src/gen/**"]\nlang = "fr"\n',
        encoding="utf-8",
    )
    (root / "src" / "pkg" / "train.py").write_text(BUGGY, encoding="utf-8")
    (root / "src" / "gen" / "generated.py").write_text(BUGGY, encoding="utf-8")
    (root / "tools" / "train2.py").write_text(BUGGY, encoding="utf-8")
    return root


def test_discovery_walks_up_to_the_nearest_pyproject_with_a_torchdoctor_table(
    project: Path,
) -> None:
    inner = project / "src" / "pkg"
    (project / "src" / "pyproject.toml").write_text('[project]\nname = "x"\n', encoding="utf-8")
    assert discover_config(inner) == project / "pyproject.toml"  # the table-less one is skipped
    loaded = load_project_config(inner)
    assert loaded.config.lang == "fr" and loaded.base == project


def test_uploads_never_take_a_configuration_from_above(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.torchdoctor]\nrun = ["python steal.py"]\n', encoding="utf-8"
    )
    upload = tmp_path / "audits" / "a1" / "src"
    upload.mkdir(parents=True)
    assert load_project_config(upload).config.run == ["python steal.py"]  # the CLI walks up
    confined = load_project_config(upload, search_parents=False)
    assert confined.config.run == [] and confined.source is None


def test_api_worker_confines_configuration_to_the_upload(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from torchdoctor.agent.audit import AuditChoices
    from torchdoctor.api.models import AuditRecord
    from torchdoctor.api.settings import ApiSettings
    from torchdoctor.api.worker import audit_options

    record = AuditRecord(
        id="a1",
        tenant="t",
        state="queued",
        options=AuditChoices(),
        workdir=str(tmp_path),
        created_at=0.0,
    )
    options = audit_options(record, ApiSettings(home=tmp_path / "home"))
    assert options.target == tmp_path / "src" and options.search_parents is False


def test_discovery_ignores_a_pyproject_link_leaving_its_folder(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "pyproject.toml").write_text("[tool.torchdoctor]\nlang = 'fr'\n", encoding="utf-8")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").symlink_to(outside / "pyproject.toml")
    assert discover_config(repo) is None


def test_discovery_through_a_linked_folder_does_not_climb_the_links_target(tmp_path: Path) -> None:
    real_parent = tmp_path / "real"
    (real_parent / "code").mkdir(parents=True)
    (real_parent / "pyproject.toml").write_text("[tool.torchdoctor]\n", encoding="utf-8")
    (tmp_path / "view").mkdir()
    (tmp_path / "view" / "code").symlink_to(real_parent / "code")
    assert discover_config(tmp_path / "view" / "code") is None
    assert discover_config(real_parent / "code") == real_parent / "pyproject.toml"


def test_a_broken_pyproject_above_the_project_is_not_ours_to_judge(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("not = [toml", encoding="utf-8")
    (tmp_path / "repo").mkdir()
    assert discover_config(tmp_path / "repo") is None
    with pytest.raises(ConfigError):
        discover_config(tmp_path)


def test_config_file_overrides_discovery_and_may_be_a_plain_toml(project: Path) -> None:
    plain = project / "tools" / "torchdoctor.toml"
    plain.write_text('lang = "en"\nignore = ["no-torch-seed"]\n', encoding="utf-8")
    loaded = load_project_config(project / "src", plain)
    assert loaded.config.lang == "en" and loaded.config.ignore == ["no-torch-seed"]
    assert loaded.base == project / "tools"
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_project_config(project, project / "missing.toml")


def test_common_root_and_several_paths_make_one_workspace(project: Path) -> None:
    paths = [project / "src" / "pkg" / "train.py", project / "tools"]
    assert common_root(paths) == project
    workspace = load_paths(paths)
    assert [f.path for f in workspace.files] == ["src/pkg/train.py", "tools/train2.py"]
    with pytest.raises(InputError, match="no such file"):
        load_paths([project / "nope.py"])
    with pytest.raises(InputError, match="not a Python file"):
        load_paths([project / "pyproject.toml"])


def test_named_files_escape_exclude_unless_forced(project: Path) -> None:
    named = [project / "src" / "gen" / "generated.py", project / "tools" / "train2.py"]
    assert len(load_paths(named, ["src/gen/**"]).files) == 2
    forced = load_paths(named, ["src/gen/**"], force_exclude=True)
    assert [f.path for f in forced.files] == ["tools/train2.py"]


def test_cli_audits_several_paths_from_their_common_root(project: Path) -> None:
    result = torchdoctor(
        "audit", "src", "tools/train2.py", "--format", "json", "--no-ledger", cwd=project
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target"] == {"path": str(project), "kind": "folder"}
    files = {f["file"] for f in report["findings"]}
    # the project's exclude (relative to the pyproject's folder) holds for the folder walked
    assert files == {"src/pkg/train.py", "tools/train2.py"}


def test_exclude_patterns_keep_their_project_meaning_below_the_config(project: Path) -> None:
    result = torchdoctor("audit", "src", "--format", "json", "--no-ledger", cwd=project)
    assert result.returncode == 0, result.stderr
    assert {f["file"] for f in json.loads(result.stdout)["findings"]} == {"pkg/train.py"}


def test_cli_config_option_and_force_exclude(project: Path) -> None:
    other = project / "other.toml"
    other.write_text('exclude = ["tools/**"]\nfail-on = "high"\n', encoding="utf-8")
    result = torchdoctor(
        "audit",
        "tools/train2.py",
        "src/pkg/train.py",
        "--config",
        str(other),
        "--force-exclude",
        "--format",
        "json",
        "--no-ledger",
        cwd=project,
    )
    assert result.returncode == 1, result.stderr  # fail-on from the given file
    assert {f["file"] for f in json.loads(result.stdout)["findings"]} == {"src/pkg/train.py"}
    missing = torchdoctor("audit", "src", "--config", "nope.toml", cwd=project)
    assert missing.returncode == 2 and "no such configuration file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_declared_group_column_reaches_the_probes_command_line(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.torchdoctor.groups]\nbatch = 2\n")
    groups = load_project_config(tmp_path).config.groups
    assert groups is not None and groups.probe_spec == "batch:2:1"
    call = HarnessCall(script="train.py", groups=groups.probe_spec)
    _module, args = harness_arguments(call, RunBudget())
    assert args[args.index("--groups") + 1] == "batch:2:1"
    (tmp_path / "pyproject.toml").write_text("[tool.torchdoctor.groups]\nbatch = 2\nfeature = 0\n")
    with pytest.raises(ConfigError, match="exactly one of `batch` and `feature`"):
        load_project_config(tmp_path)
