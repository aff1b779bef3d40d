"""Evidence gathering for the audit's ingest step: one static pass, split by checklist point.

Every file is parsed once and every rule runs in that single pass (that is what makes the
static analysis fast); each point then receives its slice of findings and evidence.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING, Any

from torchdoctor.agent import static_cache
from torchdoctor.agent.checklist import ITEMS_BY_ID, POINTS
from torchdoctor.agent.checks.advice_scope import MAX_RELATED
from torchdoctor.agent.checks.base import EngineConfig, RawFinding, numbered_excerpt
from torchdoctor.agent.checks.catalogue import peer_rule_id
from torchdoctor.agent.checks.engine import StaticResult, analyse_files
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.cluster.config import ClusterConfig, cluster_cpus
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.notebooks import cell_of
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.workspace import SourceFile, Workspace

if TYPE_CHECKING:
    from torchdoctor.agent.checks.linters.runner import LinterRun

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def parse_torch_version(text: str | None) -> tuple[int, int] | None:
    """'2.8' / '2.8.0+cu128' -> (2, 8); None or unparsable -> None."""
    if not text:
        return None
    match = _VERSION.match(text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


@cache
def installed_torch_version() -> str | None:
    """The installed torch's version, read from package metadata (torch is not imported);
    read once per process: each read scans the interpreter's site-packages."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def engine_config(config: AuditConfig) -> EngineConfig:
    target = config.torch_version or installed_torch_version()
    return EngineConfig(
        select=frozenset(config.select),
        ignore=frozenset(config.ignore),
        target_torch=parse_torch_version(target),
    )


def run_static(
    workspace: Workspace,
    config: AuditConfig,
    cluster: ClusterConfig | None = None,
    say: Callable[[str], None] | None = None,
) -> StaticResult:
    """The static pass: on this machine's cores, or sharded over a Ray cluster's (`say`
    hears where it ran); reused from the static cache when every input is the same."""
    files, settings = workspace.pairs(), engine_config(config)
    key = static_cache.key_of(files, settings, workspace.manifests, workspace.documents)

    def analyse() -> StaticResult:
        return _analyse(workspace, files, settings, cluster, say)

    result = static_cache.get_or_compute(key, analyse) if key else analyse()
    notebooks = {f.path: f for f in workspace.files if f.cells}
    if notebooks:
        for raw in result.all_findings():
            if raw.file in notebooks:
                _name_the_cell(raw, notebooks[raw.file])
            if raw.data.get("related"):
                raw.data = {**raw.data, "related": _related_cells(raw, notebooks)}
    return result


def _analyse(
    workspace: Workspace,
    files: list[tuple[str, str]],
    settings: EngineConfig,
    cluster: ClusterConfig | None,
    say: Callable[[str], None] | None,
) -> StaticResult:
    if cluster is not None and cluster.on_ray:
        from torchdoctor.agent.cluster.static import ray_chunk_runner

        return analyse_files(
            files,
            settings,
            workers=cluster_cpus(cluster),
            manifests=workspace.manifests,
            run_chunks=ray_chunk_runner(cluster, say),
            documents=workspace.documents,
        )
    return analyse_files(
        files, settings, manifests=workspace.manifests, documents=workspace.documents
    )


def _name_the_cell(raw: RawFinding, notebook: SourceFile) -> None:
    """A notebook finding names its cell and line there; its excerpt is numbered in the cell."""
    where = cell_of(notebook.cells, raw.line)
    if where is None:
        return
    cell, line = where
    span = next(s for s in notebook.cells if s.cell == cell)
    cell_lines = notebook.text.splitlines()[span.start - 1 : span.end]
    end = min(max(raw.end_line, raw.line), span.end) - span.start + 1
    raw.data = {**raw.data, "cell": cell, "cell_line": line}
    raw.excerpt = f"cell {cell}\n" + numbered_excerpt(cell_lines, line, end)


def _related_cells(raw: RawFinding, notebooks: dict[str, SourceFile]) -> list[dict[str, Any]]:
    """The finding's other places, each in a notebook with its cell and line there (in the
    finding's own notebook or another: project-wide advice names every file); the message's
    `also: nb.ipynb:57` list says `nb.ipynb:cell 1:57` likewise."""
    related: list[dict[str, Any]] = []
    for place in raw.data.get("related", []):
        notebook = notebooks.get(str(place.get("file")))
        where = cell_of(notebook.cells, place.get("line", 0)) if notebook else None
        if notebook is None or where is None or "cell" in place:
            related.append(place)
            continue
        related.append({**place, "cell": where[0], "cell_line": where[1]})
        said = re.compile(rf"(?<=[ ,]){re.escape(notebook.path)}:{place['line']}(?=[,)]| and )")
        raw.message = said.sub(f"{notebook.path}:cell {where[0]}:{where[1]}", raw.message, count=1)
    return related


def start_linters(
    workspace: Workspace, *, online: bool = False, mypy: bool = False
) -> Future[LinterRun]:
    """Start the peer linters on the workspace's files now, in the background: their
    subprocesses overlap with everything the audit does before it needs their evidence."""
    from torchdoctor.agent.checks.linters.runner import run_linters

    files = [f.path for f in workspace.files if not f.cells]  # peers read .py files only
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peers")
    future = pool.submit(
        run_linters,
        workspace.root,
        files,
        mypy=mypy,
        offline=not online,
        manifests=workspace.manifests,
    )
    pool.shutdown(wait=False)
    return future


def linter_evidence(
    workspace: Workspace, static: StaticResult, run: LinterRun, peers: str = "curated"
) -> tuple[list[tuple[int, Evidence]], dict[str, str]]:
    """Peer linters' results as evidence: attached to the native finding they confirm, else a
    finding of their own (`<tool>-<code>`); each tool's coverage becomes a verdict hint.

    Two tools' results of the same concern on one line are one finding (the second confirms
    the first), and so are one tool's results of one code in one file (its other lines are
    evidence of the first: sixteen unpinned `from_pretrained` calls are one habit). A
    standalone peer result is only context for the reasoner (no finding) when
    it is `info`, when torchdoctor's reading of the code rules it out (`PeerVeto`), or,
    unless `peers` is "all", when its code is not on the curated list (`keep` in
    linter_codes.json)."""
    from torchdoctor.agent.checks.linters.merge import merge_linter_evidence
    from torchdoctor.agent.checks.linters.peer_veto import PeerVeto
    from torchdoctor.agent.reasoning.offline import attach_key

    attached, standalone = merge_linter_evidence(static.all_findings(), run.evidence)
    veto = PeerVeto(workspace.text_of, torch_floor=static.torch_floor)
    pairs: list[tuple[int, Evidence]] = []
    for (rule, file, line), evidence in attached.items():
        for ev in evidence:
            ev.data["attach_to"] = attach_key(rule, file, line)
            pairs.append((int(ev.data["point"]), ev))
    first_of: dict[tuple[str, int, str, int], str] = {}  # (file, line, concern, point) -> rule
    first_of_code: dict[tuple[str, str], Evidence] = {}  # (file, peer rule) -> its finding's
    also: dict[int, tuple[Evidence, list[int]]] = {}  # that evidence -> the code's other lines
    for ev in (e.model_copy(deep=True) for e in standalone):
        ruled_out = veto.reason(ev)
        hidden = not ruled_out and peers != "all" and ev.data.get("kept") is False
        if ruled_out:
            ev.data["ruled_out"] = ruled_out
        if hidden:
            ev.data["context"] = "not on the curated list of peer codes (--peers all shows it)"
        if ruled_out or hidden or ev.data.get("severity") == "info":
            pairs.append((int(ev.data["point"]), ev))  # context for the reasoner, not a problem
            continue
        peer_rule = peer_rule_id(ev.source, str(ev.data.get("code", "")))
        concern, point = ev.data.get("concern"), int(ev.data["point"])
        same = (ev.file or "", ev.line or 0, concern, point) if isinstance(concern, str) else None
        if same is not None and same in first_of:  # bandit B614 and TorchFix TOR102 on one load
            ev.data["attach_to"] = attach_key(first_of[same], same[0], same[1])
            pairs.append((point, ev))
            continue
        if same is not None:
            first_of[same] = peer_rule
        repeat = (ev.file or "", peer_rule)
        if repeat in first_of_code:  # one code of one tool in one file is one finding (B615 x16)
            first = first_of_code[repeat]
            ev.data["attach_to"] = attach_key(peer_rule, repeat[0], first.line or 0)
            also.setdefault(id(first), (first, []))[1].append(ev.line or 0)
            pairs.append((point, ev))
            continue
        first_of_code[repeat] = ev
        ev.data["finding"] = {
            "rule": peer_rule,
            "severity": ev.data.get("severity", "low"),
            "title": f"{ev.source} {ev.data.get('code', '')}: {ev.message}",
            "code": f"{ev.data.get('code', '')} {ev.message}",
        }
        pairs.append((int(ev.data["point"]), ev))
    for first, lines in also.values():
        shown = ", ".join(map(str, lines[:MAX_RELATED]))
        more = f" and {len(lines) - MAX_RELATED} more" if len(lines) > MAX_RELATED else ""
        first.message = f"{first.message} (file-wide, also lines {shown}{more})"
    for note in run.coverage:
        verdict = {"checked": "pass", "partial": None, "not-checked": "not-checked"}[note.status]
        by_point: dict[int, list[str]] = defaultdict(list)
        for item in note.items:
            by_point[ITEMS_BY_ID[item].point].append(item)
        for point, items in by_point.items():
            data: dict[str, object] = {"items": items}
            if verdict:
                data["verdict"] = verdict
            pairs.append(
                (
                    point,
                    Evidence(
                        source=note.tool,
                        kind="linter",
                        message=f"{note.tool}: {note.reason}",
                        data=data,
                    ),
                )
            )
    return pairs, run.tools


def split_by_point(
    workspace: Workspace,
    static: StaticResult,
    lang: str,
    extra_evidence: list[tuple[int, Evidence]] | None = None,
) -> dict[int, PointRequest]:
    """One request per checklist point, carrying that point's findings, rules and evidence."""
    rules = rules_by_id()
    raw_by_point: dict[int, list[RawFinding]] = defaultdict(list)
    for raw in static.all_findings():
        rule = rules.get(raw.rule)
        raw_by_point[rule.point if rule else 1].append(raw)
    evidence_by_point: dict[int, list[Evidence]] = defaultdict(list)
    for number, ev in extra_evidence or []:
        evidence_by_point[number].append(ev)
    applicable = static.applicable_rules()
    files = [f.path for f in workspace.files]
    notes = [f"{r.path}: {r.note}" for r in static.files if r.note]
    requests: dict[int, PointRequest] = {}
    for point in POINTS:
        run_here = [r for r in static.rules_run if r in rules and rules[r].point == point.number]
        requests[point.number] = PointRequest(
            point=point.number,
            lang=lang,
            raw_findings=raw_by_point[point.number],
            evidence=evidence_by_point[point.number],
            rules_run=run_here,
            applicable_rules=sorted(r for r in run_here if r in applicable),
            files=files,
            notes=notes if point.number == 1 else [],
        )
    return requests
