"""`torchdoctor serve | keys | submit`: the service's commands, added to the main CLI.

Only typer is imported here; the server and client load when their command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from torchdoctor.agent.options import AuditChoices
    from torchdoctor.api.settings import ApiSettings
    from torchdoctor.api.store.store import Store
    from torchdoctor.api.terminal.backends import Backend

stderr = Console(stderr=True, soft_wrap=True)
keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def _need_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise _fail("the API needs its extra: pip install 'torchdoctor[api]'") from None


def _settings() -> ApiSettings:
    """The service's settings, or a one-line error naming the variable that is wrong."""
    from pydantic import ValidationError

    from torchdoctor.api.settings import ApiSettings

    try:
        return ApiSettings()
    except ValidationError as err:
        first = err.errors()[0]
        names = [str(part).upper() for part in first["loc"]]
        where = f"TORCHDOCTOR_{names[0]}" if names else "TORCHDOCTOR_*"
        raise _fail(f"{where}: {first['msg']}") from None


def _open_store(url: str) -> Store:
    """The migrated store at `url`, or a one-line error (a bad URL, a database that does not
    answer or refuses)."""
    from sqlalchemy.exc import SQLAlchemyError

    from torchdoctor.api.store.engine import migrate, open_engine
    from torchdoctor.api.store.store import Store

    try:
        engine = open_engine(url)
        migrate(engine)
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise _fail(f"the database ({_redacted(url)}): {reason}") from None
    return Store(engine)


def _redacted(url: str) -> str:
    """The URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "an unparsable URL"


def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (TORCHDOCTOR_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (TORCHDOCTOR_PORT).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="uvicorn processes (TORCHDOCTOR_WORKERS).")
    ] = None,
) -> None:
    """Run the REST API (uvicorn); settings come from TORCHDOCTOR_* variables."""
    _need_extra()
    import uvicorn

    from torchdoctor.agent.cluster.config import ClusterConfig
    from torchdoctor.agent.config import ConfigError
    from torchdoctor.api.logs import LOG_CONFIG

    try:
        ClusterConfig.from_env()
    except ConfigError as err:
        raise _fail(str(err)) from None
    settings = _settings()
    _open_store(settings.url)
    uvicorn.run(
        "torchdoctor.api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers or settings.workers,
        log_config=LOG_CONFIG,
        timeout_graceful_shutdown=5,
    )


def _store() -> Store:
    return _open_store(_settings().url)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
) -> None:
    """Create a key and print it once: only its hash is kept."""
    _need_extra()
    store = _store()
    if not tenant.strip() or len(tenant) > 128:
        raise _fail("a tenant name is 1 to 128 characters")
    key_id, key = store.create_key(tenant.strip())
    sys.stdout.write(key + "\n")
    stderr.print(f"key {key_id} for tenant {tenant}: store it now, it is not shown again")


@keys_app.command("list")
def keys_list() -> None:
    """Key ids, tenants, and whether each is revoked (never the keys)."""
    _need_extra()
    store = _store()
    for key_id, tenant, _created, revoked in store.list_keys():
        sys.stdout.write(f"{key_id}\t{tenant}\t{'revoked' if revoked else 'active'}\n")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (td_<id>_...).")]) -> None:
    """Revoke a key: its next request is refused."""
    _need_extra()
    store = _store()
    if not store.revoke_key(key_id):
        raise _fail(f"no active key {key_id}")
    stderr.print(f"revoked {key_id}")


PROBES_HELP = "full | cheap (no seeded determinism re-runs, no export check; quicker)."


def _check_probes(probes: str) -> None:
    if probes not in ("cheap", "full"):
        raise _fail(f"unknown probe depth {probes!r}: use cheap or full")


def submit(
    path: Annotated[Path, typer.Argument(help="The file or folder to audit.")],
    server: Annotated[str, typer.Option(envvar="TORCHDOCTOR_SERVER", help="The API's URL.")],
    key: Annotated[
        str, typer.Option(envvar="TORCHDOCTOR_API_KEY", help="API key (TORCHDOCTOR_API_KEY).")
    ],
    wait: Annotated[
        bool, typer.Option(help="Follow the audit, then download its report and patch.")
    ] = False,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Glob of relative paths not to send.")
    ] = None,
    offline: Annotated[bool, typer.Option(help="The server's offline reasoner.")] = False,
    fix: Annotated[bool, typer.Option(help="Propose and verify fixes.")] = False,
    fix_time: Annotated[
        float | None,
        typer.Option(
            "--fix-time", min=1, help="Seconds the fixes' verifications may take (default 1200)."
        ),
    ] = None,
    run: Annotated[
        list[str] | None, typer.Option(help='Run under the probes, e.g. "python train.py".')
    ] = None,
    select: Annotated[list[str] | None, typer.Option(help="Enable opt-in rules.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Steps per instrumented run.")] = 20,
    probes: Annotated[str, typer.Option(help=PROBES_HELP)] = "full",
    yes: Annotated[bool, typer.Option(help="Approve every verified fix when asked.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json | sarif | markdown")] = (
        "markdown"
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the report here (with --wait).")
    ] = None,
    patch: Annotated[
        Path | None, typer.Option(help="Write the approved fixes' patch here (with --wait).")
    ] = None,
) -> None:
    """Send code to a torchdoctor server; with --wait, show progress and fetch the results."""
    _need_extra()
    from torchdoctor.agent.audit import AuditChoices
    from torchdoctor.api.client import Client, ClientError, describe, pack

    if fmt not in ("json", "sarif", "markdown"):
        raise _fail(f"unknown format {fmt!r}: use json, sarif or markdown")
    if not path.exists():
        raise _fail(f"{path}: no such file or folder")
    _check_probes(probes)
    options = AuditChoices(
        offline=offline,
        fix=fix,
        **({"fix_time": fix_time} if fix_time is not None else {}),
        run=run or [],
        select=select or [],
        steps=steps,
        probes="cheap" if probes == "cheap" else "full",
    )
    client = Client(server, key)
    try:
        audit_id = client.submit(pack(path, exclude or []), options)
        stderr.print(f"audit {audit_id} submitted to {server}", highlight=False)
        if not wait:
            sys.stdout.write(audit_id + "\n")
            return
        state = "queued"
        for event in client.events(audit_id):
            line = describe(event)
            if line:
                stderr.print(line, highlight=False)
            if event.kind == "state":
                state = str(event.data.get("state"))
            if state == "waiting-approval":
                fixes = client.approvals(audit_id)["pending"]["changes"]
                if not yes:
                    raise _fail(
                        f"{len(fixes)} verified fix(es) wait for approval: run again with --yes, "
                        f"or POST {server}/v1/audits/{audit_id}/approvals"
                    )
                decisions = [{"finding_id": f["finding_id"], "approve": True} for f in fixes]
                client.approve(audit_id, decisions)
                state = "queued"
        final = client.status(audit_id)
        if final["state"] != "done":
            raise _fail(f"audit {audit_id} {final['state']}: {final.get('error') or ''}".strip())
        report = client.text(audit_id, "report", format=fmt)
        if output is not None:
            output.write_text(report, encoding="utf-8")
        else:
            sys.stdout.write(report)
        if patch is not None:
            patch.write_text(client.text(audit_id, "patch"), encoding="utf-8")
            stderr.print(f"patch: {patch}", highlight=False)
    except ClientError as err:
        raise _fail(str(err)) from None


def chat(
    path: Annotated[
        Path | None, typer.Argument(help="The file or folder to audit and review.")
    ] = None,
    audit: Annotated[
        str | None, typer.Option(help="Review an existing audit (here, or on --server).")
    ] = None,
    session: Annotated[str | None, typer.Option(help="Resume a session by its id.")] = None,
    server: Annotated[
        str | None, typer.Option(help="A torchdoctor server's URL: the session lives there.")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(envvar="TORCHDOCTOR_API_KEY", help="API key for --server."),
    ] = None,
    lang: Annotated[str | None, typer.Option(help="en | fr (default: en).")] = None,
    run: Annotated[
        list[str] | None, typer.Option(help='Run under the probes, e.g. "python train.py".')
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Steps per instrumented run.")] = 20,
    probes: Annotated[str, typer.Option(help=PROBES_HELP)] = "full",
    offline: Annotated[bool, typer.Option(help="No LLM, even if one is configured.")] = False,
    sandbox: Annotated[
        str | None, typer.Option(help="auto | local | docker (default: $TORCHDOCTOR_SANDBOX).")
    ] = None,
) -> None:
    """Review an audit in a chat session: commands answered from the evidence, questions to
    the LLM, fixes proposed, verified, approved and applied. Sessions are stored: resume one
    with --session."""
    _need_extra()
    from torchdoctor.agent.home import torchdoctor_home
    from torchdoctor.agent.options import AuditChoices
    from torchdoctor.api.client import ClientError
    from torchdoctor.api.terminal.repl import run_repl

    if lang not in (None, "en", "fr"):
        raise _fail(f"unknown language {lang!r}: use en or fr")
    if sum(x is not None for x in (path, audit, session)) != 1:
        raise _fail("give one of PATH, --audit ID and --session ID")
    if path is not None and not path.exists():
        raise _fail(f"{path}: no such file or folder")
    _check_probes(probes)
    choices = AuditChoices(
        offline=offline,
        run=run or [],
        steps=steps,
        lang=lang,
        probes="cheap" if probes == "cheap" else "full",
    )
    console = Console(soft_wrap=False)
    try:
        if server is None:
            backend = _local_backend(path, audit, session, choices, sandbox, console)
        else:
            if not key:
                raise _fail("--server needs an API key (--key or TORCHDOCTOR_API_KEY)")
            backend = _remote_backend(server, key, path, audit, session, choices, console)
    except KeyboardInterrupt:
        raise _fail("cancelled before the session opened") from None
    except (ClientError, LookupError, ValueError) as err:
        raise _fail(str(err)) from None
    home = torchdoctor_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_repl(backend, console, home / "chat_history")


def _local_backend(
    path: Path | None,
    audit: str | None,
    session: str | None,
    choices: AuditChoices,
    sandbox: str | None,
    console: Console,
) -> Backend:
    """A session on this machine: its audits run here, on the user's own files."""
    from torchdoctor.agent.progress import progress_reporter
    from torchdoctor.agent.session.local import stored_audit
    from torchdoctor.agent.session.models import SessionState
    from torchdoctor.api.terminal.backends import LOCAL_TENANT, Local, local_service

    service = local_service(_store(), sandbox)
    state = SessionState(lang=choices.lang or "en", choices=choices)
    if session is not None:
        service.get(LOCAL_TENANT, session)
        return Local(service, session)
    if audit is not None:
        target, kept = stored_audit(audit)
        # the audit's own choices; the language and --offline as this command line says
        kept = kept.model_copy(
            update={"lang": choices.lang or kept.lang, "offline": choices.offline or kept.offline}
        )
        state = SessionState(lang=kept.lang or "en", choices=kept)
        created = service.create(
            LOCAL_TENANT,
            str(target.resolve()),
            state,
            lambda engine, first: engine.open(first, audit),
        )
        return Local(service, created.id)
    assert path is not None
    with progress_reporter(console) as on_event:
        created = service.create(
            LOCAL_TENANT,
            str(path.resolve()),
            state,
            lambda engine, first: engine.start(first, on_event),
        )
    return Local(service, created.id)


def _remote_backend(
    server: str,
    key: str,
    path: Path | None,
    audit: str | None,
    session: str | None,
    choices: AuditChoices,
    console: Console,
) -> Backend:
    """A session on a server: the code is sent there, the audits run there."""
    import httpx

    from torchdoctor.agent.progress import progress_reporter
    from torchdoctor.api.client import Client, pack
    from torchdoctor.api.terminal.backends import Remote

    http = httpx.Client(
        base_url=server.rstrip("/"), headers={"Authorization": f"Bearer {key}"}, timeout=300
    )
    if session is not None:
        remote = Remote(http, session)
        remote.finding_ids()  # the session exists and is this tenant's
        return remote
    if path is not None:
        audit = Client(server, key).submit(pack(path, []), choices)
    created = Remote(http, "").call(
        "POST", "/v1/sessions", json={"audit_id": audit, "lang": choices.lang}
    )
    remote = Remote(http, str(created.json()["id"]))
    with progress_reporter(console) as on_event:
        remote.follow(on_event or (lambda _event: None))
    return remote


def register(app: typer.Typer) -> None:
    """Add the service's commands to the main CLI."""
    app.command()(serve)
    app.command()(submit)
    app.command()(chat)
    app.add_typer(keys_app, name="keys")
