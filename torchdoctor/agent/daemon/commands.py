"""`torchdoctor daemon start | stop | status`: the pre-commit daemon by hand (the hook starts
it by itself on first use)."""

from __future__ import annotations

import sys

import typer

from torchdoctor.agent.daemon import client, runtime

daemon_app = typer.Typer(
    help="The warm process behind the pre-commit hook (`torchdoctor-hook`).",
    no_args_is_help=True,
)


def _where() -> str:
    try:
        return str(runtime.socket_path(runtime.runtime_dir()))
    except runtime.UnsafeRuntimeDir as err:
        sys.stderr.write(f"torchdoctor: {err}\n")
        raise typer.Exit(code=2) from None


@daemon_app.command()
def start() -> None:
    """Start the daemon (if none runs) and wait until it listens."""
    where = _where()
    reply = client.start_and_wait()
    if reply is None:
        folder = runtime.runtime_dir()
        log = runtime.log_path(folder)
        why = ""
        if runtime.failed_before(folder, runtime.code_fingerprint()):
            why = _failure_reason(folder) + "; "
        sys.stderr.write(f"torchdoctor: the daemon did not start ({why}see {log})\n")
        raise typer.Exit(code=2)
    sys.stdout.write(f"daemon {reply['pid']} listening on {where}\n")


def _failure_reason(folder: str) -> str:
    with open(runtime.failure_path(folder), encoding="utf-8") as failure:
        return failure.read().split("\n")[1]


@daemon_app.command()
def stop() -> None:
    """Stop the daemon, if one runs."""
    where = _where()
    reply = client.ask("stop")
    sys.stdout.write(f"daemon {reply['pid']} stopped\n" if reply else f"no daemon on {where}\n")


@daemon_app.command()
def status() -> None:
    """Say whether a daemon runs, and whether it runs this installation's code (exit 1 if not)."""
    where = _where()
    reply = client.ask("ping")
    if reply is None:
        sys.stdout.write(f"no daemon on {where}\n")
        raise typer.Exit(code=1)
    current = reply["fingerprint"] == runtime.code_fingerprint()
    state = "current" if current else "stale: the next hook call replaces it"
    sys.stdout.write(f"daemon {reply['pid']} on {where} ({state})\n")
