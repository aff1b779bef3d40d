"""The Ray executor's pieces that need no cluster: settings read from the environment with
one-line errors, the engine's sharded path merging to the one-machine result, and the
shipping of a job's workspace (links kept, escapes refused)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import FileResult, analyse_chunk, analyse_files
from torchdoctor.agent.cluster.config import ClusterConfig
from torchdoctor.agent.cluster.sandbox import on_this_node
from torchdoctor.agent.cluster.shipping import pack, unpack
from torchdoctor.agent.config import ConfigError
from torchdoctor.sandbox import PACKAGE_ROOT
from torchdoctor.sandbox.models import Job
from torchdoctor.sandbox.workspace import remove_workspace

REPO = Path(__file__).resolve().parents[2]
BUGGY = (REPO / "examples" / "train_buggy.py").read_text(encoding="utf-8")


def test_the_environment_picks_the_executor() -> None:
    assert not ClusterConfig.from_env({}).on_ray
    cluster = ClusterConfig.from_env(
        {
            "TORCHDOCTOR_EXECUTOR": "ray",
            "RAY_ADDRESS": "10.0.0.5:6379",
            "TORCHDOCTOR_RAY_GPU_RESOURCE": "a100",
            "TORCHDOCTOR_RAY_RETRIES": "1",
        }
    )
    assert cluster.on_ray and cluster.address == "10.0.0.5:6379" and cluster.retries == 1
    assert cluster.asks_for_gpu() == {"resources": {"a100": 1}}
    assert ClusterConfig(executor="ray").asks_for_gpu() == {"num_gpus": 1}


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TORCHDOCTOR_EXECUTOR": "celery"}, "TORCHDOCTOR_EXECUTOR: Input should be 'local'"),
        ({"TORCHDOCTOR_RAY_RETRIES": "-1"}, "TORCHDOCTOR_RAY_RETRIES: Input should be greater"),
    ],
)
def test_a_bad_setting_is_a_one_line_error(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ClusterConfig.from_env(env)
    assert str(caught.value).startswith(words) and "\n" not in str(caught.value)


def test_the_cli_refuses_a_bad_executor_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("import torch\n")
    env = {**os.environ, "TORCHDOCTOR_EXECUTOR": "celery", "TORCHDOCTOR_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "torchdoctor", "audit", str(tmp_path / "train.py"), "--offline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "TORCHDOCTOR_EXECUTOR" in done.stderr and "Traceback" not in done.stderr


def test_sharded_results_merge_to_the_one_machine_result() -> None:
    files = [(f"m{index:02d}.py", BUGGY) for index in range(30)]
    calls: list[int] = []

    def backwards(
        chunks: list[list[tuple[str, str]]], config: EngineConfig
    ) -> list[list[FileResult]]:
        calls.append(len(chunks))
        return [analyse_chunk(chunk, config) for chunk in reversed(chunks)]

    sharded = analyse_files(files, workers=3, run_chunks=backwards)
    local = analyse_files(files, workers=1)
    timings = {"seconds": True, "files": {"__all__": {"seconds", "cpu_seconds"}}}
    assert calls == [24]
    assert sharded.model_dump(exclude=timings) == local.model_dump(exclude=timings)
    assert sharded.all_findings()


@pytest.mark.skipif(
    not hasattr(tarfile, "data_filter"), reason="this Python's tarfile has no data filter"
)
def test_a_shipped_workspace_keeps_inner_links_and_refuses_escapes(tmp_path: Path) -> None:
    tree = tmp_path / "ws"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "train.py").write_text(BUGGY)
    (tree / "alias.py").symlink_to("pkg/train.py")
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "x.pyc").write_bytes(b"\0")
    folder, copy = unpack(pack(tree))
    try:
        assert (copy / "pkg" / "train.py").read_text() == BUGGY
        assert (copy / "alias.py").is_symlink() and (copy / "alias.py").read_text() == BUGGY
        assert not (copy / "__pycache__").exists()
    finally:
        remove_workspace(folder)
    (tree / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(tarfile.TarError):
        unpack(pack(tree))


def test_a_job_runs_with_the_nodes_own_interpreter_and_harness(tmp_path: Path) -> None:
    job = Job(
        workspace=tmp_path,
        command=["/opt/conda/bin/python", "-m", "torchdoctor.sandbox.probes", "train.py"],
        env={"PYTHONPATH": "/srv/torchdoctor:/extra"},
    )
    moved = on_this_node(job, ("/opt/conda/bin/python", "/srv/torchdoctor"))
    assert moved.command == [sys.executable, *job.command[1:]]
    assert moved.env["PYTHONPATH"] == f"{PACKAGE_ROOT}:/extra"
    assert on_this_node(job, ("/usr/bin/python3", "/elsewhere")) == job


def test_a_module_job_is_left_for_the_nodes_backend_to_resolve(tmp_path: Path) -> None:
    job = Job(workspace=tmp_path, module="torchdoctor.sandbox.probes", args=["train.py"])
    assert on_this_node(job, ("/opt/conda/bin/python", "/srv/torchdoctor")) == job


@pytest.mark.skipif(hasattr(tarfile, "data_filter"), reason="this Python has the data filter")
def test_without_the_data_filter_a_shipped_workspace_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    with pytest.raises(tarfile.TarError, match="no data filter"):
        unpack(pack(tmp_path))
