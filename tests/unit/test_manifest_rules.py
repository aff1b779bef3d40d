"""vulnerable-torch-pin and unpinned-dependencies through the engine's manifest hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.manifests import declared_floor, find_manifests, parse_manifests

FIXTURES = Path(__file__).parents[1] / "fixtures" / "manifests"
SOURCE = [("train.py", "import torch\n")]
CONDA_TORCH_2_4 = "dependencies:\n  - pytorch=2.4\n"


def vulnerable(requirements: str) -> list[str]:
    result = analyse_files(SOURCE, manifests={"requirements.txt": requirements})
    return [f.code for f in result.project_findings if f.rule == "vulnerable-torch-pin"]


@pytest.mark.parametrize(
    "pin",
    ["torch==2.5.1", "torch==2.5.1+cu121", "torch<2.6", "torch~=2.4.0", "torch==2.3.*",
     "torch>=2.0,<=2.5.1", "torch===1.13.1"],
)  # fmt: skip
def test_pins_allowing_only_affected_versions_are_reported(pin: str) -> None:
    assert vulnerable(f"{pin}\n") == [pin]


@pytest.mark.parametrize(
    "pin", ["torch", "torch>=2.0", "torch==2.6.0", "torch>=2.4,<2.7", "torch>=2.6", "numpy==1.0"]
)
def test_pins_that_allow_a_fixed_release_are_not_reported(pin: str) -> None:
    assert vulnerable(f"{pin}\n") == []


def test_finding_cites_the_advisory_and_the_manifest_line() -> None:
    result = analyse_files(SOURCE, manifests=find_manifests(FIXTURES))
    found = {(f.file, f.line): f for f in result.project_findings}
    assert set(found) == {
        ("requirements.txt", 4),
        ("pyproject.toml", 5),
        ("cfg/setup.cfg", 6),
        ("conda/environment.yml", 7),
        ("locked/uv.lock", 19),
    }
    finding = found[("requirements.txt", 4)]
    assert finding.severity == "critical"
    assert "CVE-2025-32434" in finding.message and "2.6.0" in finding.message
    assert finding.data["advisories"] == ["GHSA-53q9-r3pm-6pq6"]
    assert "> 4 | torch==2.5.1+cu121" in finding.excerpt
    assert "vulnerable-torch-pin" in result.applicable_rules()


def test_without_manifests_the_rule_neither_runs_nor_counts_as_applicable() -> None:
    result = analyse_files(SOURCE)
    assert result.project_findings == []
    assert "vulnerable-torch-pin" not in result.applicable_rules()
    assert "vulnerable-torch-pin" in result.rules_run


def test_unpinned_dependencies_is_opt_in() -> None:
    manifests = {"requirements.txt": "numpy\ntorch==2.8.0\nlib @ https://example.com/l.tgz\n"}
    assert analyse_files(SOURCE, manifests=manifests).project_findings == []
    config = EngineConfig(select=frozenset({"unpinned-dependencies"}))
    findings = analyse_files(SOURCE, config, manifests=manifests).project_findings
    assert [(f.rule, f.line, f.data["package"]) for f in findings] == [
        ("unpinned-dependencies", 1, "numpy")
    ]


def test_a_lock_file_pins_what_the_manifest_leaves_open() -> None:
    locked = FIXTURES / "locked"
    manifests = {name: (locked / name).read_text() for name in ("pyproject.toml", "uv.lock")}
    config = EngineConfig(select=frozenset({"unpinned-dependencies"}))
    assert [
        f.rule for f in analyse_files(SOURCE, config, manifests=manifests).project_findings
    ] == [
        "vulnerable-torch-pin"  # torch==2.5.1 in uv.lock; `torch` in pyproject is locked
    ]


@pytest.mark.parametrize(
    ("manifests", "floor"),
    [
        ({"requirements.txt": "torch>=2.7\n"}, (2, 7)),
        ({"pyproject.toml": '[project]\ndependencies = ["torch>=2.7", "numpy"]\n'}, (2, 7)),
        ({"requirements.txt": "torch>2.5,<3\n"}, (2, 5)),
        ({"requirements.txt": "torch~=2.6.0\n", "environment.yml": CONDA_TORCH_2_4}, (2, 4)),
        ({"requirements.txt": "torch>=2.7\n", "requirements-dev.txt": "torch\n"}, None),
        ({"requirements.txt": "numpy>=1.26\n"}, None),
    ],
)  # fmt: skip
def test_the_torch_floor_is_the_lowest_bound_any_declaration_allows(
    manifests: dict[str, str], floor: tuple[int, int] | None
) -> None:
    assert declared_floor(parse_manifests(manifests), "torch") == floor
