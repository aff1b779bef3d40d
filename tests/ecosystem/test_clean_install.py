"""The wheel from a clean copy of the repository, installed in a fresh virtual environment next
to PyPI's `agent` and `prompts` distributions (whose names torchdoctor's packages once took),
and the GitHub Action's own shell steps run against that environment.

Dependencies come from the package registry (or pip's cache); the environment has no access to
this interpreter's site-packages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO
from tests.ecosystem.clean_tree import NO_INSTALL_BYTECODE, clean_copy

pytestmark = pytest.mark.slow

BUGGY = """\
import torch
import torch.nn.functional as F


def train(model, loader, optimizer):
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.softmax(model(x), dim=-1), y)
        loss.backward()
        optimizer.step()
"""


def run(
    command: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus anything that points Python at this checkout, pip's
    installs not byte-compiled."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **NO_INSTALL_BYTECODE, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    base = tmp_path_factory.mktemp("clean-install")
    source = clean_copy(base / "clone")
    dist = base / "dist"
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), "."],
        cwd=source,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("torchdoctor-*.whl")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    for requirement in (["agent", "prompts"], [str(wheel)]):
        done = run([str(python), "-m", "pip", "install", "--quiet", *requirement], cwd=base)
        assert done.returncode == 0, done.stderr[-3000:]
    yield {"base": base, "source": source, "wheel": wheel, "bin": env_dir / "bin"}


def test_wheel_holds_only_the_torchdoctor_namespace(installed: dict[str, Path]) -> None:
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"torchdoctor"}
    assert "torchdoctor/py.typed" in names


def test_cli_and_module_work_next_to_pypi_agent_and_prompts(installed: dict[str, Path]) -> None:
    bin_dir, base = installed["bin"], installed["base"]
    python = str(bin_dir / "python")
    isolated = run([python, "-c", "import sys; print(sys.flags.no_site, sys.path)"], cwd=base)
    assert str(REPO) not in isolated.stdout
    for command in (
        [str(bin_dir / "torchdoctor"), "--help"],
        [python, "-m", "torchdoctor", "--help"],
    ):
        done = run(command, cwd=base)
        assert done.returncode == 0 and "audit" in done.stdout, done.stderr[-2000:]
    pypi = run([python, "-c", "import agent, iuse; print(agent.__file__)"], cwd=base)
    assert pypi.returncode == 0 and "site-packages/agent.py" in pypi.stdout, pypi.stderr
    check = run([python, "-m", "pip", "check"], cwd=base)
    assert check.returncode == 0, check.stdout


def test_offline_audit_in_the_fresh_environment(installed: dict[str, Path]) -> None:
    project = installed["base"] / "offline-project"
    project.mkdir()
    (project / "train.py").write_text(BUGGY, encoding="utf-8")
    env = clean_env(TORCHDOCTOR_HOME=str(project / ".home"))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TORCHDOCTOR_MODEL"):
        env.pop(var, None)
    done = run(
        [str(installed["bin"] / "torchdoctor"), "audit", "train.py", "--offline", "-f", "json"],
        cwd=project,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert "double-softmax" in {f["rule"] for f in report["findings"]}
    assert (project / "ISSUES.md").is_file()


def _action() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))
    return document


def _expand(value: str, inputs: dict[str, str], outputs: dict[str, str], action: Path) -> str:
    def one(match: re.Match[str]) -> str:
        expression = match.group(1).strip()
        if expression.startswith("inputs."):
            return inputs[expression.removeprefix("inputs.")]
        if expression == "github.action_path":
            return str(action)
        if expression.startswith("steps.audit.outputs."):
            return outputs.get(expression.removeprefix("steps.audit.outputs."), "")
        raise AssertionError(f"the test does not know ${{{{ {expression} }}}}")

    return re.sub(r"\$\{\{(.*?)\}\}", one, value)


def run_action(
    installed: dict[str, Path], workspace: Path, *, install: bool = True, **overrides: str
) -> list[int]:
    """Each `run:` step of action.yml as the runner runs it (bash -eo pipefail, inputs through
    env, $GITHUB_OUTPUT); `uses:` steps (setup-python, upload-sarif) are GitHub's own. With
    `install=False` the install step is left out: an earlier run put the same source in the
    same environment (each install builds the wheel again, about 4 CPU-s)."""
    action = _action()
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    inputs.update(overrides)
    outputs: dict[str, str] = {}
    codes: list[int] = []
    for step in action["runs"]["steps"]:
        if "run" not in step:
            assert step["uses"].split("@")[0] in {
                "actions/setup-python",
                "github/codeql-action/upload-sarif",
            }
            continue
        if not install and step["name"] == "Install torchdoctor":
            continue
        output_file = workspace / ".github-output"
        output_file.write_text("", encoding="utf-8")
        step_env = {
            k: _expand(str(v), inputs, outputs, installed["source"])
            for k, v in step.get("env", {}).items()
        }
        assert "${{" not in step["run"], "inputs must reach the script through env only"
        env = clean_env(
            PATH=f"{installed['bin']}{os.pathsep}{os.environ['PATH']}",
            GITHUB_OUTPUT=str(output_file),
            TORCHDOCTOR_HOME=str(workspace / ".home"),
            **step_env,
        )
        done = run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=workspace,
            env=env,
        )
        codes.append(done.returncode)
        for line in output_file.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            outputs[key] = value
        if done.returncode != 0:
            break
    return codes


def test_action_steps_audit_write_sarif_and_fail_on_severity(installed: dict[str, Path]) -> None:
    workspace = installed["base"] / "action-workspace"
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "train.py").write_text(BUGGY, encoding="utf-8")
    codes = run_action(installed, workspace, paths="src", **{"sarif-file": "out.sarif"})
    assert codes == [0, 0, 1]  # install, audit (its exit code goes to an output), fail
    sarif = json.loads((workspace / "out.sarif").read_text(encoding="utf-8"))
    schema = json.loads((REPO / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(sarif, schema)
    assert any(r["ruleId"] == "double-softmax" for r in sarif["runs"][0]["results"])
    # the audit step under other inputs, torchdoctor installed by the first run
    never = run_action(installed, workspace, install=False, paths="src", **{"fail-on": "never"})
    assert never == [0, 0]  # audit, fail
    assert run_action(installed, workspace, install=False, paths="missing") == [2]
