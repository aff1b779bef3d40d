"""Git on an untrusted repository, from the host: nothing in the repository may run code.

The repository's own `.git/config` can name programs (fsmonitor, hooks, pagers, external
diff and textconv drivers, credential helpers, a lazy-fetch remote). Every invocation here
turns those off on the command line, ignores the system and global configuration, and starts
git with a minimal environment (an allow-list), so the caller's secrets do not reach it.
Callers only read objects and refs: worktree content is compared in Python, so clean/smudge
filters named by `.gitattributes` never run either.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

_SAFE_CONFIG = (
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "core.pager=cat",
    "core.askPass=",
    "credential.helper=",
    "diff.external=",
    "protocol.allow=never",
)
_KEPT_ENV = ("PATH", "SYSTEMROOT", "TMPDIR")
_FIXED_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_PAGER": "cat",
    "PAGER": "cat",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_NO_LAZY_FETCH": "1",
    "LC_ALL": "C",
    "HOME": "/nonexistent",
}
DEFAULT_TIMEOUT_S = 60.0


class GitError(ValueError):
    """git failed, or the folder is not in a git repository; the message is one line."""


def git_environment() -> dict[str, str]:
    env = {key: os.environ[key] for key in _KEPT_ENV if key in os.environ}
    env.update(_FIXED_ENV)
    return env


def git_command(repo: Path, args: Sequence[str]) -> list[str]:
    command = ["git", "--no-pager", "-C", str(repo)]
    for setting in _SAFE_CONFIG:
        command += ["-c", setting]
    return [*command, *args]


def run_git(
    repo: Path,
    args: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """git's stdout; `GitError` with git's first error line on failure."""
    try:
        done = subprocess.run(
            git_command(repo, args),
            input=stdin,
            capture_output=True,
            env=git_environment(),
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} timed out after {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(lines[0] if lines else f"git {args[0]} exited {done.returncode}")
    return done.stdout
