"""The command lines of the isolation mechanisms: what each namespace tool is asked to do."""

from __future__ import annotations

import json
from pathlib import Path

from torchdoctor.sandbox.core import LocalRunner
from torchdoctor.sandbox.mechanisms import (
    Layout,
    Mechanism,
    command,
    host_socket_paths,
    launch_spec,
)

PY = "/opt/py/bin/python3"
ROOTS = ("/opt/py", "/srv/repo/sandbox")


def _argv(mechanism: Mechanism, *, privileged: bool = True, gpu: tuple[str, ...] = ()) -> list[str]:
    layout = Layout(PY, ROOTS, privileged, gpu)
    spec = launch_spec(mechanism, layout, "/runs/ws-1", 201234, {"CPU": 5}, 64)
    return command(mechanism, layout, spec, 64, ["python", "train.py"])


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_bwrap_unshares_everything_but_binds_only_what_the_job_needs() -> None:
    argv = _argv(Mechanism.BWRAP)
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent"):
        assert flag in argv
    assert set(ROOTS) <= set(_pairs(argv, "--ro-bind"))
    assert _pairs(argv, "--bind") == ["/runs/ws-1"]
    assert "/runs" in _pairs(argv, "--dir")
    assert "--dev-bind" not in argv
    assert argv[-2:] == ["python", "train.py"]


def test_bwrap_keeps_only_the_capabilities_needed_to_drop_to_the_job_uid() -> None:
    assert _pairs(_argv(Mechanism.BWRAP), "--cap-add") == ["CAP_SETUID", "CAP_SETGID"]
    assert "--cap-add" not in _argv(Mechanism.BWRAP, privileged=False)


def test_gpu_device_nodes_are_bound_only_when_given() -> None:
    argv = _argv(Mechanism.BWRAP, gpu=("/dev/nvidia0", "/dev/nvidiactl"))
    assert _pairs(argv, "--dev-bind") == ["/dev/nvidia0", "/dev/nvidiactl"]


def test_unshare_runs_the_launcher_as_init_with_private_mounts() -> None:
    argv = _argv(Mechanism.UNSHARE)
    assert argv[0].endswith("unshare")
    assert {"--pid", "--net", "--mount", "--kill-child", "--mount-proc"} <= set(argv)
    spec = json.loads(argv[argv.index("--") + 5])
    assert spec["init"] is True
    assert spec["private_tmp_mb"] == 64
    assert "/root" in spec["hide"]
    assert spec["uid"] == spec["gid"] == 201234


def test_unshare_without_root_asks_for_a_user_namespace() -> None:
    assert "--map-root-user" in _argv(Mechanism.UNSHARE, privileged=False)
    assert "--map-root-user" not in _argv(Mechanism.UNSHARE)


def test_bare_rlimits_is_just_the_launcher() -> None:
    argv = _argv(Mechanism.RLIMITS)
    assert argv[0] == PY
    spec = json.loads(argv[4])
    assert spec["init"] is False and spec["private_tmp_mb"] == 0
    assert spec["rlimits"] == {"CPU": 5}


def test_host_sockets_are_read_from_the_unix_socket_table(tmp_path: Path) -> None:
    table = tmp_path / "unix"
    table.write_text(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "0000000063464361: 00000002 00000000 00010000 0001 01 790551 "
        "/run/postgresql/.s.PGSQL.5432\n"
        "00000000fec93595: 00000003 00000000 00000000 0001 03   662\n"
        "000000002472649b: 00000002 00000000 00010000 0001 01 789940 @/tmp/.X11-unix/X0\n"
        "000000002472649c: 00000002 00000000 00010000 0001 01 789941 /var/cache/a b.sock\n"
    )
    assert host_socket_paths(table) == ("/run/postgresql/.s.PGSQL.5432", "/var/cache/a b.sock")


def test_a_shared_cache_is_the_one_writable_bind_beside_the_workspace() -> None:
    layout = Layout(PY, ROOTS, True, (), ("/tmp/cc/td-ws-1-cc-x",))
    spec = launch_spec(Mechanism.BWRAP, layout, "/runs/ws-1", 201234, {"CPU": 5}, 64)
    argv = command(Mechanism.BWRAP, layout, spec, 64, ["python", "train.py"])
    assert _pairs(argv, "--bind") == ["/tmp/cc/td-ws-1-cc-x", "/runs/ws-1"]
    assert "/tmp/cc" in _pairs(argv, "--dir")
    unshared = launch_spec(Mechanism.UNSHARE, layout, "/runs/ws-1", 201234, {"CPU": 5}, 64)
    assert json.loads(unshared.to_json())["writable"] == ["/tmp/cc/td-ws-1-cc-x"]


def test_a_jobs_private_tmp_links_inductors_own_folder_into_the_shared_cache() -> None:
    links = (("/tmp/torchinductor_sandbox", "/tmp/cc/td-ws-1-cc-x/inductor-tmp"),)
    layout = Layout(PY, ROOTS, True, (), ("/tmp/cc/td-ws-1-cc-x",), links)
    spec = launch_spec(Mechanism.BWRAP, layout, "/runs/ws-1", 201234, {"CPU": 5}, 64)
    argv = command(Mechanism.BWRAP, layout, spec, 64, ["python", "train.py"])
    at = argv.index("--symlink", argv.index("/dev/shm"))  # after the private /tmp is made
    assert argv[at : at + 3] == ["--symlink", links[0][1], links[0][0]]
    assert json.loads(spec.to_json())["links"] == []  # bwrap makes it, not the launcher
    unshared = launch_spec(Mechanism.UNSHARE, layout, "/runs/ws-1", 201234, {"CPU": 5}, 64)
    assert json.loads(unshared.to_json())["links"] == [list(links[0])]


def test_a_bare_rlimits_jobs_temporary_folder_is_never_a_link_out_of_the_workspace(
    tmp_path: Path,
) -> None:
    """A job that replaced the workspace's `.tmp` with a link (or a file) between runs does
    not make the next run's host-side set-up write outside the workspace."""
    outside = tmp_path / "outside"
    outside.mkdir()
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / ".tmp").symlink_to(outside)
    made = LocalRunner._tmpdir(Mechanism.RLIMITS, workspace, None)
    assert Path(made) == workspace / ".tmp"
    assert not Path(made).is_symlink() and Path(made).is_dir()
    (workspace / ".tmp").rmdir()
    (workspace / ".tmp").write_text("planted")
    assert Path(LocalRunner._tmpdir(Mechanism.RLIMITS, workspace, None)).is_dir()
    assert list(outside.iterdir()) == []
