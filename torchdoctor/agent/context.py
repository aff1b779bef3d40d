"""An audit's run context: the dependencies the graph's nodes use but the state does not hold.

LangGraph passes it to every node (`context_schema`), so the compiled graph is a module-level
object; a door (CLI, API, chat) builds one per audit and per resume.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdoctor.agent.cluster.config import ClusterConfig
from torchdoctor.agent.config import RunBudget
from torchdoctor.agent.reasoning.base import Reasoner
from torchdoctor.agent.workspace import Workspace
from torchdoctor.sandbox.protocol import Sandbox

if TYPE_CHECKING:
    from torchdoctor.agent.checks.linters.runner import LinterRun
    from torchdoctor.agent.harness import Harness

Progress = Callable[[dict[str, Any]], None]


class SandboxHandle:
    """The audit's sandbox, built on first use and then reused: once per audit. On a Ray
    cluster, jobs run as tasks in the sandbox of the node that takes them (`say` hears which
    node ran each job)."""

    def __init__(
        self,
        choice: str | None = None,
        sandbox: Sandbox | None = None,
        cluster: ClusterConfig | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.choice = choice
        self.cluster = cluster or ClusterConfig()
        self.say = say
        self._sandbox = sandbox
        self._lock = threading.Lock()

    def get(self) -> Sandbox:
        with self._lock:
            if self._sandbox is None and self.cluster.on_ray:
                from torchdoctor.agent.cluster.sandbox import RaySandbox

                self._sandbox = RaySandbox(self.choice, self.cluster, self.say)
            elif self._sandbox is None:
                from torchdoctor.sandbox.config import get_sandbox

                self._sandbox = get_sandbox(self.choice)
            return self._sandbox

    @property
    def built(self) -> bool:
        return self._sandbox is not None


@dataclass
class AuditContext:
    """What the nodes run against: the snapshot, the reasoner, the sandbox, a progress sink."""

    workspace: Workspace
    reasoner: Reasoner
    sandbox: SandboxHandle = field(default_factory=SandboxHandle)
    progress: Progress | None = None
    peers: Future[LinterRun] | None = None
    """The peer linters, started with the audit (they overlap with the static pass)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the heavy work runs (`TORCHDOCTOR_EXECUTOR`): this machine or a Ray cluster."""
    compile_cache: Path | None = None
    """The compiler cache the audit's sandbox jobs share (`shared_cache`), while it runs."""

    def harness(self, budget: RunBudget, gpu: bool) -> Harness:
        """The probes harness client on this audit's sandbox (audit runs and fix checks);
        imported here, as a static audit never needs it."""
        from torchdoctor.agent.harness import Harness

        return Harness(self.sandbox.get(), budget, gpu=gpu, cache=self.compile_cache)

    def emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(event)
