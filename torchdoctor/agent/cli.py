"""`torchdoctor` command line: audit, undo, doctor, rules, schema.

Exit codes: 0 nothing open at or above `--fail-on`; 1 open findings at or above it;
2 a usage or input error (with a one-line message, never a traceback).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from torchdoctor import __version__
from torchdoctor.agent.checks.catalogue import CatalogueRule, catalogue, closest
from torchdoctor.agent.config import ConfigError
from torchdoctor.agent.daemon.commands import daemon_app
from torchdoctor.agent.escape import one_line, terminal, terminal_lines
from torchdoctor.agent.models import Severity
from torchdoctor.agent.options import DEFAULT_FIX_TIME_S
from torchdoctor.agent.progress import live_display_paused, progress_reporter
from torchdoctor.agent.report import render, write_report
from torchdoctor.agent.workspace import InputError
from torchdoctor.sandbox.core import SandboxUnavailable

if TYPE_CHECKING:  # the audit machinery (LangGraph) loads only when an audit runs
    from torchdoctor.agent.artifacts.models import ArtifactKind
    from torchdoctor.agent.audit import Approver, AuditOutcome


app = typer.Typer(
    suggest_commands=True,
    help="Audit PyTorch code along a 12-point checklist, with evidence.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)
stderr = Console(stderr=True, soft_wrap=True)
app.add_typer(daemon_app, name="daemon")


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"torchdoctor {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", is_eager=True, callback=_print_version, help="Print the version."
        ),
    ] = False,
) -> None:
    """Audit PyTorch code along a 12-point checklist, with evidence."""


class OutputFormat(StrEnum):
    json = "json"
    sarif = "sarif"
    markdown = "markdown"
    github = "github"
    junit = "junit"
    concise = "concise"


class Lang(StrEnum):
    en = "en"
    fr = "fr"


class PeerShow(StrEnum):
    curated = "curated"
    all = "all"


class ProbeDepth(StrEnum):
    cheap = "cheap"
    full = "full"


def _fail(message: str) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {terminal(message)}", highlight=False)
    return typer.Exit(code=2)


def _approver(apply: bool, yes: bool) -> Approver | None:
    """How `--apply`'s question is answered: `--yes` approves all; a terminal asks per diff;
    without either the audit refuses (after the report and the ledger are written)."""
    from torchdoctor.agent.approval import approve_all, ask_in_terminal, refuse_without_terminal

    if not apply:
        return None
    if yes:
        return approve_all
    if sys.stdin.isatty() and stderr.is_terminal:
        return ask_in_terminal(
            _ask_over_progress, lambda text: stderr.print(terminal_lines(text), highlight=False)
        )
    return refuse_without_terminal


def _ask_over_progress(prompt: str) -> str:
    with live_display_paused():
        return stderr.input(prompt, markup=False, emoji=False)  # `[y]es` is not markup


def _with_progress(
    start: Callable[[Callable[[dict[str, Any]], None]], AuditOutcome], quiet: bool
) -> AuditOutcome:
    """Runs `start(progress)`: the audit id printed (with how to resume), progress shown."""
    with progress_reporter(stderr, quiet=quiet) as on_event:

        def progress(event: dict[str, Any]) -> None:
            if event.get("event") == "audit" and event.get("durable"):
                audit_id = terminal(str(event["audit_id"]))
                stderr.print(
                    f"audit {audit_id} (resume: torchdoctor audit --resume {audit_id})",
                    highlight=False,
                )
            if on_event is not None:
                on_event(event)

        return start(progress)


@app.command()
def audit(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Python files and/or folders; several are reported from their common root."
        ),
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Report format.")
    ] = OutputFormat.markdown,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here instead of stdout.")
    ] = None,
    offline: Annotated[
        bool, typer.Option(help="Use the deterministic reasoner even if an LLM is configured.")
    ] = False,
    fail_on: Annotated[
        Severity | None,
        typer.Option("--fail-on", help="Exit 1 if an open finding is at or above this severity."),
    ] = None,
    lang: Annotated[
        Lang | None, typer.Option(help="Language of the markdown report and the ledger.")
    ] = None,
    ledger: Annotated[
        Path | None, typer.Option(help="Ledger path (default: ISSUES.md in the audited folder).")
    ] = None,
    no_ledger: Annotated[
        bool, typer.Option("--no-ledger", help="Do not write the ISSUES.md ledger.")
    ] = False,
    select: Annotated[
        list[str] | None,
        typer.Option(help="Enable opt-in rules (rule id, point number, or 'all')."),
    ] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="Disable a rule by id.")] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of relative paths to skip.")
    ] = None,
    torch_version: Annotated[
        str | None,
        typer.Option(
            "--torch-version",
            help="Target PyTorch version for compatibility rules (default: installed).",
        ),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option(help='Run a script under the probes, e.g. "python train.py --epochs 1".'),
    ] = None,
    discover: Annotated[
        bool,
        typer.Option(help="Also run the entry points found (a __main__ guard that trains)."),
    ] = False,
    steps: Annotated[
        int,
        typer.Option(
            min=1,
            help=(
                "Optimizer steps (backward passes when parameters are updated by hand; "
                "forwards for inference) per instrumented run."
            ),
        ),
    ] = 20,
    probe: Annotated[
        list[str] | None, typer.Option(help="Extra probe: compile (torch.compile cost vs gain).")
    ] = None,
    probes: Annotated[
        ProbeDepth,
        typer.Option(
            help="full: each run, then two seeded re-runs for determinism and the export "
            "check; cheap: the run alone, quicker (the report names the checks skipped).",
        ),
    ] = ProbeDepth.full,
    sandbox: Annotated[
        str | None, typer.Option(help="auto | local | docker (default: $TORCHDOCTOR_SANDBOX).")
    ] = None,
    linters: Annotated[
        bool | None,
        typer.Option("--linters/--no-linters", help="Run peer linters (ruff, bandit, ...)."),
    ] = None,
    peers: Annotated[
        PeerShow | None,
        typer.Option(
            help="Peer linter codes shown as findings: curated (those that matter to the "
            "checklist; the rest is context) or all.",
        ),
    ] = None,
    online: Annotated[
        bool, typer.Option(help="Let pip-audit query the vulnerability database (network).")
    ] = False,
    mypy: Annotated[bool, typer.Option(help="Also run mypy (slower).")] = False,
    fix: Annotated[
        bool, typer.Option(help="Propose fixes and verify each by running the code (--run).")
    ] = False,
    fix_time: Annotated[
        float,
        typer.Option(
            "--fix-time",
            min=1,
            help="Seconds the fixes' verifications may take in all; a verification that "
            "would end past it is not started (the fix stays proposed, with the reason).",
        ),
    ] = DEFAULT_FIX_TIME_S,
    apply: Annotated[
        bool, typer.Option(help="Also write the verified fixes to the files (atomically).")
    ] = False,
    artifacts: Annotated[
        str | None,
        typer.Option(
            help="Generate, run in the sandbox and offer: tests, card, drift, types, validation, "
            "export, explain (comma-separated, or all); --apply writes the ones that ran, after "
            "approval.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="--apply even on a dirty git work tree.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Configuration file (a pyproject.toml's [tool.torchdoctor], or a TOML file "
            "with those keys at top level) instead of the nearest pyproject.toml.",
        ),
    ] = None,
    force_exclude: Annotated[
        bool,
        typer.Option(help="Apply `exclude` to files named on the command line too (pre-commit)."),
    ] = False,
    static_only: Annotated[
        bool,
        typer.Option(
            help="No instrumented runs (not even the configuration's `run`) and no LLM: "
            "the pre-commit hook's mode."
        ),
    ] = False,
    changed_since: Annotated[
        str | None,
        typer.Option(
            "--changed-since",
            help="Report only findings on lines changed since this git ref (the whole audit "
            "still runs, so cross-file facts hold).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress lines or bar on stderr.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="--apply every verified fix without asking.")
    ] = False,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue the interrupted audit with this id (its options are kept)."),
    ] = None,
) -> None:
    """Audit scripts or repositories and write a report (and the ISSUES.md ledger)."""
    from torchdoctor.agent.audit import AuditOptions, ResumeError, resume_audit, run_audit
    from torchdoctor.agent.workspace import common_root

    if output is not None and output.is_dir():
        raise _fail(f"--output {output}: is a folder, not a file")
    if resume is not None:
        if paths:
            raise _fail("--resume continues an audit on its own paths: give no path")
        try:
            outcome = _with_progress(
                lambda progress: resume_audit(resume, progress, approver=_approver(True, yes)),
                quiet,
            )
        except (InputError, ConfigError, ResumeError, SandboxUnavailable) as err:
            raise _fail(str(err)) from None
        _finish(outcome, fmt, output, fail_on, changed_since)
        return
    if not paths:
        raise _fail("give the files or folders to audit, or --resume ID")
    if static_only and (run or discover or fix or apply):
        raise _fail("--static-only runs nothing: drop --run, --discover, --fix and --apply")
    several = len(paths) > 1
    try:
        options = AuditOptions(
            target=common_root(paths) if several else paths[0],
            paths=paths if several else [],
            config=config,
            force_exclude=force_exclude,
            static_only=static_only,
            offline=offline or static_only,
            lang=lang.value if lang else None,
            ledger=ledger,
            write_ledger=not no_ledger,
            select=select or [],
            ignore=ignore or [],
            exclude=exclude or [],
            torch_version=torch_version,
            run=run or [],
            discover=discover,
            steps=steps,
            probe_compile="compile" in (probe or []),
            probes=probes.value,
            sandbox=sandbox,
            linters=linters,
            peers=peers.value if peers else None,
            online=online,
            mypy=mypy,
            fix=fix,
            fix_time=fix_time,
            apply=apply,
            force=force,
            artifacts=artifact_kinds(artifacts),
        )
    except ValidationError as err:
        raise _fail(_first_error(err)) from None
    unknown = set(probe or []) - {"compile"}
    if unknown:
        raise _fail(f"unknown probe(s) {sorted(unknown)}: the optional probe is 'compile'")
    approver = _approver(options.apply, yes)
    try:
        outcome = _with_progress(
            lambda progress: run_audit(options, progress, approver=approver), quiet
        )
    except (InputError, ConfigError, SandboxUnavailable) as err:
        raise _fail(str(err)) from None
    _finish(outcome, fmt, output, fail_on, changed_since)


def artifact_kinds(text: str | None) -> list[ArtifactKind]:
    """`tests,card` -> ['tests', 'card']; `all` -> every kind; an unknown name is a usage
    error that lists the known ones."""
    from torchdoctor.agent.artifacts.models import ARTIFACT_KINDS

    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    if "all" in names:
        return list(ARTIFACT_KINDS)
    known: dict[str, ArtifactKind] = {kind: kind for kind in ARTIFACT_KINDS}
    unknown = [one_line(name) for name in names if name not in known]
    if unknown:
        raise _fail(f"--artifacts: unknown {unknown}; known: {', '.join(ARTIFACT_KINDS)}, all")
    return [known[name] for name in names]


def _finish(
    outcome: AuditOutcome,
    fmt: OutputFormat,
    output: Path | None,
    fail_on: Severity | None,
    changed_since: str | None,
) -> None:
    """The report out, a summary line, then the exit code (2 when --apply was refused: the
    report and the ledger are written all the same)."""
    report = outcome.report
    if changed_since is not None:
        from torchdoctor.agent.changes import changed_lines, restrict_to_changes

        target = Path(report.target.path)
        root = target if target.is_dir() else target.parent
        try:
            changes = changed_lines(root, changed_since, [f.file for f in report.findings])
        except (InputError, ConfigError) as err:
            raise _fail(str(err)) from None
        report = restrict_to_changes(report, changes, changed_since)
    threshold = fail_on or outcome.fail_on
    if output is not None:
        try:
            write_report(report, fmt.value, outcome.lang, output)
        except OSError as err:
            raise _fail(f"--output {output}: {err.strerror or err}") from None
    else:
        sys.stdout.write(render(report, fmt.value, outcome.lang))
    for note in report.summary.files_skipped:
        stderr.print(
            f"[yellow]not audited:[/] {terminal(note.file)}: {terminal(note.reason)}",
            highlight=False,
        )
    by_sev = ", ".join(f"{k}: {v}" for k, v in report.summary.by_severity.items()) or "none"
    ledger_note = f"; ledger: {terminal(outcome.ledger_path)}" if outcome.ledger_path else ""
    stderr.print(f"{report.summary.total} finding(s) ({by_sev}){ledger_note}", highlight=False)
    if outcome.refused:
        raise _fail(f"no fix applied: {outcome.refused}")
    if threshold is not None and any(
        f.status.is_open and f.severity.rank >= threshold.rank for f in report.findings
    ):
        raise typer.Exit(code=1)


@app.command()
def undo(
    path: Annotated[Path, typer.Argument(help="The file or folder given to `audit --apply`.")],
    force: Annotated[bool, typer.Option(help="Restore even files changed since.")] = False,
) -> None:
    """Restore, byte for byte, the files the last `audit --apply` on PATH changed."""
    from torchdoctor.agent.config import find_project_root
    from torchdoctor.agent.fixes.apply import undo as undo_fixes

    if not path.exists():
        raise _fail(f"{path}: no such file or folder")
    result = undo_fixes(find_project_root(path), force=force)
    if result.refused:
        raise _fail(result.refused)
    for restored in result.restored:
        sys.stdout.write(f"restored {restored}\n")
    for removed in result.removed:
        sys.stdout.write(f"removed {removed}\n")


@app.command()
def graph() -> None:
    """Print the audit graph as Mermaid (paste into any Mermaid viewer)."""
    from torchdoctor.agent.studio import graph as audit_graph

    sys.stdout.write(audit_graph.get_graph().draw_mermaid())


@app.command()
def gc(
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            min=0,
            help="Prune audits untouched this long (default $TORCHDOCTOR_RETENTION_DAYS, 14).",
        ),
    ] = None,
) -> None:
    """Prune old audit checkpoints (an audit pruned can no longer be resumed)."""
    from torchdoctor.agent.durable import open_store, retention_days

    days = retention_days() if older_than_days is None else older_than_days
    with open_store() as store:
        pruned = store.prune(days)
    sys.stdout.write(f"pruned {len(pruned)} audit(s) older than {days:g} day(s)\n")


@app.command()
def doctor() -> None:
    """Self-check: sandbox isolation per backend, GPU visibility, torch/CUDA, optional tools."""
    from torchdoctor.sandbox.doctor import render_doctor, self_check

    sys.stdout.write(render_doctor(self_check()) + "\n")


@app.command()
def rules(
    rule_id: Annotated[str | None, typer.Argument(help="Explain one rule.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | json")] = "table",
) -> None:
    """List every rule (native, probe and peer-linter rules), or explain one."""
    if fmt not in ("table", "json"):
        raise _fail(f"unknown format {fmt!r}: use table or json")
    from torchdoctor.agent.fixes.codemods import fixable_rules

    known = catalogue()
    fixable = fixable_rules()
    if rule_id is not None:
        rule = known.get(rule_id)
        if rule is None:
            near = closest(rule_id)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise _fail(f"unknown rule {rule_id!r}{hint} (see `torchdoctor rules`)")
        if fmt == "json":
            sys.stdout.write(json.dumps(_listed(rule, fixable), indent=2) + "\n")
        else:
            sys.stdout.write(_explain(rule, rule.id in fixable))
        return
    if fmt == "json":
        listed = [_listed(r, fixable) for r in known.values()]
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
        return
    sys.stdout.write(_rules_table(list(known.values()), fixable))


def _listed(rule: CatalogueRule, fixable: frozenset[str]) -> dict[str, Any]:
    """A rule as `rules --format json` prints it: fixable when a codemod exists for it."""
    return {**rule.model_dump(mode="json"), "fixable": rule.id in fixable}


def _rules_table(listed: list[CatalogueRule], fixable: frozenset[str]) -> str:
    """Plain aligned columns, nothing cut: ids and titles are read and copied whole."""
    rows = [("id", "kind", "point", "severity", "fix", "title")]
    for rule in listed:
        rows.append(
            (
                rule.id,
                rule.kind if rule.kind != "peer" else rule.tool,
                str(rule.point or "-"),
                rule.severity.value if rule.severity else "-",
                "yes" if rule.id in fixable else "no",
                " ".join(rule.title.split()),
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(5)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True))
        + f"  {row[5]}\n"
        for row in rows
    )


class SchemaName(StrEnum):
    report = "report"
    probe_document = "probe-document"


@app.command()
def schema(
    name: Annotated[SchemaName, typer.Argument(help="report | probe-document")],
) -> None:
    """Print the JSON Schema of a document torchdoctor writes (generated from its models)."""
    from torchdoctor.agent.schemas import json_schema

    sys.stdout.write(json.dumps(json_schema(name.value), indent=2) + "\n")


def _explain(rule: CatalogueRule, fixable: bool) -> str:
    facts = [f"{rule.kind} rule" if rule.kind != "peer" else f"{rule.tool} rule"]
    if rule.point is not None:
        facts.append(f"point {rule.point}")
    if rule.severity is not None:
        facts.append(f"severity {rule.severity.value}")
    if rule.kind == "native":
        facts += [f"tier {rule.tier}", f"fix: {'yes' if fixable else 'no'}"]
    if rule.items:
        facts.append(f"items {', '.join(rule.items)}")
    text = f"{rule.id} — {rule.title}\n{' · '.join(facts)}\n\n{rule.doc}\n"
    if rule.severity_note:
        text += f"\nSeverity: {rule.severity_note}\n"
    if rule.link:
        text += f"\nMore: {rule.link}\n"
    if rule.kind == "peer":
        text += (
            f'\nSilence it with `--ignore {rule.id}`, `ignore = ["{rule.id}"]` or '
            f"`# torchdoctor: ignore[{rule.id}]`; the whole tool with `--ignore {rule.tool}`.\n"
        )
    return text


def _first_error(err: ValidationError) -> str:
    """One line naming the option and what is wrong with it."""
    first = err.errors()[0]
    where = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
    return f"{where}: {first['msg']} (got {first.get('input')!r})"


@cache
def application() -> typer.Typer:
    """The CLI with the service's commands (serve, keys, submit), registered once per process
    (the pre-commit daemon runs it again in every worker)."""
    from torchdoctor.api.cli import register

    register(app)
    return app


def main() -> None:
    application()()
