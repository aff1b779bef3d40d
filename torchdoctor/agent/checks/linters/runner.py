"""Runs the available peer linters side by side and gathers their evidence and coverage.

Each tool is a real subprocess with its own time limit, run from a thread so they overlap;
whatever a tool could not do (missing, crashed, timed out, offline, opt-in and not asked)
becomes a `CoverageNote` for the checklist items it would have covered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checks.linters import cache as peer_cache
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.base import (
    LinterAdapter,
    LinterResult,
    LinterStatus,
    tool_items,
)
from torchdoctor.agent.checks.linters.detect_secrets import DetectSecretsAdapter
from torchdoctor.agent.checks.linters.mypy import MypyAdapter
from torchdoctor.agent.checks.linters.pip_audit import PipAuditAdapter
from torchdoctor.agent.checks.linters.ruff import RuffAdapter
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter
from torchdoctor.agent.models import Evidence

DEFAULT_TIMEOUT_S = 300.0
_COVERAGE: dict[LinterStatus, Literal["checked", "partial", "not-checked"]] = {
    "ok": "checked",
    "partial": "partial",
    "not-installed": "not-checked",
    "failed": "not-checked",
    "timeout": "not-checked",
    "not-run": "not-checked",
}


class CoverageNote(BaseModel):
    """What one tool checked for the checklist items it covers, or why it did not."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    items: list[str]
    status: Literal["checked", "partial", "not-checked"]
    reason: str


class LinterRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    evidence: list[Evidence] = Field(default_factory=list)
    coverage: list[CoverageNote] = Field(default_factory=list)
    tools: dict[str, str] = Field(default_factory=dict, description="tool -> version, as run")
    results: list[LinterResult] = Field(default_factory=list)


def default_adapters(
    *,
    mypy: bool = False,
    offline: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    manifests: Mapping[str, str] | None = None,
) -> list[LinterAdapter]:
    adapters: list[LinterAdapter] = [
        TorchFixAdapter(timeout_s),
        RuffAdapter(timeout_s),
        BanditAdapter(timeout_s),
        DetectSecretsAdapter(timeout_s),
        PipAuditAdapter(timeout_s, offline=offline, manifests=manifests),
    ]
    if mypy:
        adapters.append(MypyAdapter(timeout_s))
    return adapters


def _run_one(
    adapter: LinterAdapter, root: Path, files: list[str], inputs: str | None
) -> LinterResult:
    """One tool's result: from the peer cache when `inputs` (the files' content digest) were
    seen before with this tool and version, else from a run of the tool."""
    if not adapter.available():
        return LinterResult(
            tool=adapter.name, status="not-installed", notes=[f"{adapter.name} is not installed"]
        )

    def run() -> LinterResult:
        try:
            return adapter.run(root, files)
        except Exception as err:  # an adapter bug must cost its evidence, not the audit
            note = f"{adapter.name} adapter failed: {type(err).__name__}: {err}"
            return LinterResult(tool=adapter.name, status="failed", notes=[note])

    key = peer_cache.result_key(adapter.name, adapter.version(), inputs)
    if not key:
        return run()
    result, cached = peer_cache.get_or_run(key, run)
    return result.model_copy(update={"cached": True}) if cached else result


def _coverage(result: LinterResult, file_count: int) -> CoverageNote:
    reason = "; ".join(result.notes)
    if not reason:
        reason = f"{result.tool} {result.version} checked {file_count} files".replace("  ", " ")
    if result.unknown:
        reason += f"; unknown: {', '.join(result.unknown)}"
    return CoverageNote(
        tool=result.tool,
        items=tool_items(result.tool),
        status=_COVERAGE[result.status],
        reason=reason,
    )


def run_linters(
    root: Path,
    files: Sequence[str],
    adapters: Sequence[LinterAdapter] | None = None,
    *,
    mypy: bool = False,
    offline: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    manifests: Mapping[str, str] | None = None,
) -> LinterRun:
    """Run the linters over `files` (POSIX paths relative to `root`) and collect the results.

    Without `adapters`, the default set runs (mypy only when `mypy`); `offline` keeps
    pip-audit from trying the network and says so in its coverage note; `manifests` are the
    dependency manifests pip-audit audits (default: every one found under `root`).
    """
    chosen = (
        list(adapters)
        if adapters is not None
        else default_adapters(mypy=mypy, offline=offline, timeout_s=timeout_s, manifests=manifests)
    )
    paths = list(files)
    inputs = peer_cache.input_digest(root, paths) if peer_cache.enabled() else None
    with ThreadPoolExecutor(max_workers=max(1, len(chosen))) as pool:
        results = list(pool.map(lambda adapter: _run_one(adapter, root, paths, inputs), chosen))
    coverage = [_coverage(result, len(paths)) for result in results]
    if adapters is None and not mypy:
        coverage.append(
            CoverageNote(
                tool="mypy",
                items=tool_items("mypy"),
                status="not-checked",
                reason="mypy is opt-in (slower) and was not requested",
            )
        )
    return LinterRun(
        evidence=[e for result in results for e in result.evidence],
        coverage=coverage,
        tools={r.tool: r.version for r in results if r.version},
        results=results,
    )
