"""What a `--run` command launches: a script, its arguments, and how many processes.

`python train.py`, `torchrun --nproc-per-node 2 train.py` and
`python -m torch.distributed.run --nproc_per_node=2 train.py` all name one script; the
distributed forms also name a process count. `python -m pkg.train` names the module's file,
`pkg/train.py`, and keeps the module's name: the harness runs it as Python would, with the
package's relative imports. Rendezvous options are not kept: inside the
sandbox every rank meets on 127.0.0.1 (single node), whatever the command said.
"""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

PYTHON_FLAGS = {"-u", "-B", "-O", "-OO"}
MAX_PROCS = 8
DEFAULT_AUTO_PROCS = 2
_LAUNCHER_MODULES = {"torch.distributed.run", "torch.distributed.launch"}
_VALUE_OPTIONS = {
    "--nnodes",
    "--node-rank",
    "--node_rank",
    "--rdzv-backend",
    "--rdzv_backend",
    "--rdzv-endpoint",
    "--rdzv_endpoint",
    "--rdzv-id",
    "--rdzv_id",
    "--rdzv-conf",
    "--rdzv_conf",
    "--master-addr",
    "--master_addr",
    "--master-port",
    "--master_port",
    "--max-restarts",
    "--max_restarts",
    "--monitor-interval",
    "--monitor_interval",
    "--start-method",
    "--start_method",
    "--role",
    "--log-dir",
    "--log_dir",
    "--redirects",
    "--tee",
    "--local-addr",
    "--local_addr",
}
_FLAG_OPTIONS = {"--standalone", "--no-python", "--no_python", "--run-path", "--run_path"}


class Launch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    script: str
    args: list[str] = Field(default_factory=list)
    nproc: int = Field(default=1, ge=1, le=MAX_PROCS)
    module: str | None = Field(default=None, description="`python -m NAME`: the module's name")

    @property
    def distributed(self) -> bool:
        return self.nproc > 1


def parse_launch(command: str) -> Launch:
    """The script, arguments and process count of a `--run` command (ValueError if none)."""
    tokens = shlex.split(command)
    launcher = False
    if tokens and Path(tokens[0]).name == "torchrun":
        launcher, tokens = True, tokens[1:]
    else:
        while tokens and (Path(tokens[0]).name.startswith("python") or tokens[0] in PYTHON_FLAGS):
            tokens.pop(0)
        if len(tokens) >= 2 and tokens[0] == "-m" and tokens[1] in _LAUNCHER_MODULES:
            launcher, tokens = True, tokens[2:]
        elif len(tokens) >= 2 and tokens[0] == "-m":
            return _module_launch(command, tokens[1], tokens[2:])
    nproc = 1
    if launcher:
        nproc, tokens = _launcher_options(command, tokens)
    if not tokens or not tokens[0].endswith(".py"):
        raise ValueError(
            f"cannot run {command!r}: expected `python SCRIPT.py [ARGS...]` or "
            "`torchrun --nproc-per-node N SCRIPT.py [ARGS...]`"
        )
    return Launch(script=tokens[0], args=tokens[1:], nproc=nproc)


def _module_launch(command: str, module: str, args: list[str]) -> Launch:
    """`python -m pkg.train ARGS`: the module's file, `pkg/train.py` (a package's `__main__`
    is named as `pkg.__main__`)."""
    if not _MODULE_NAME.fullmatch(module):
        raise ValueError(f"cannot run {command!r}: {module!r} is not a module name")
    return Launch(script=module.replace(".", "/") + ".py", args=args, module=module)


_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _launcher_options(command: str, tokens: list[str]) -> tuple[int, list[str]]:
    nproc = 1
    while tokens and tokens[0].startswith("-"):
        option, _, inline = tokens.pop(0).partition("=")
        if option in _FLAG_OPTIONS:
            if option in ("--no-python", "--no_python"):
                raise ValueError(f"cannot run {command!r}: --no-python runs no Python script")
            continue
        if option == "-m" or option == "--module":
            raise ValueError(f"cannot run {command!r}: name the script file, not a module")
        value = inline or (tokens.pop(0) if tokens else "")
        if option in ("--nproc-per-node", "--nproc_per_node"):
            nproc = _procs(command, value)
        elif option == "--nnodes" and value not in ("1", "1:1"):
            raise ValueError(f"cannot run {command!r}: the sandbox runs a single node")
        elif option not in _VALUE_OPTIONS:
            raise ValueError(f"cannot run {command!r}: unknown launcher option {option}")
    return nproc, tokens


def _procs(command: str, value: str) -> int:
    if value in ("auto", "cpu", "gpu"):
        return DEFAULT_AUTO_PROCS
    if not value.isdigit() or not 1 <= int(value) <= MAX_PROCS:
        raise ValueError(f"cannot run {command!r}: --nproc-per-node must be 1-{MAX_PROCS}")
    return int(value)


def torchrun_arguments(nproc: int) -> list[str]:
    """`torch.distributed.run`'s arguments for a single-node launch whose ranks meet on
    127.0.0.1 (the sandbox has loopback and nothing else), ready for `-m <harness> ...`."""
    return [
        *("--nnodes", "1", "--nproc-per-node", str(nproc)),
        *("--master-addr", "127.0.0.1", "--master-port", str(free_port())),
    ]


def free_port() -> int:
    """A port free on this host: under rlimits-only isolation ranks share its network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
