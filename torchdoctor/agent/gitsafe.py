"""Git on an untrusted repository, from the host: nothing in the repository may run code.

The repository's own `.git/config` can name programs (fsmonitor, hooks, pagers, external
diff and textconv drivers, credential helpers, a lazy-fetch remote). Every invocation here
turns those off on the command line, ignores the system and global configuration, and starts
git with a minimal environment (an allow-list), so the caller's secrets do not reach it.
Callers only read objects and refs: worktree content is compared in Python, so clean/smudge
filters named by `.gitattributes` never run either; `git status` (the dirty-tree check before
`--apply`) would run a `clean` filter, so every filter driver the repository's config defines
gets empty commands too. The folder is trusted by `safe.directory` for that one call (rather
than trusting every folder), submodules are not entered, and git dies with its caller.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from torchdoctor.sandbox.lifeline import die_with_parent

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


def git_command(repo: Path, args: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Settings given with `-c` win over every config file, included ones too."""
    command = ["git", "--no-pager", "-C", str(repo)]
    for setting in (*_SAFE_CONFIG, *extra, f"safe.directory={os.path.realpath(repo)}"):
        command += ["-c", setting]
    return [*command, *args]


def _filter_overrides(repo: Path) -> list[str]:
    """Empty clean/smudge/process commands for every filter driver the repository's config
    defines (listing the config reads it and runs nothing)."""
    try:
        listed = _run(git_command(repo, ["config", "--list", "--name-only", "-z"]), None, 30.0)
    except GitError:
        return []
    drivers = sorted(
        {
            key.split(".")[1]
            for key in listed.decode("utf-8", "surrogateescape").split("\0")
            if key.lower().startswith("filter.") and key.count(".") >= 2
        }
    )
    return [f"filter.{d}.{k}=" for d in drivers for k in ("clean", "smudge", "process")] + [
        f"filter.{d}.required=false" for d in drivers
    ]


def run_git(
    repo: Path,
    args: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """git's stdout; `GitError` with git's first error line on failure."""
    return _run(git_command(repo, args, _filter_overrides(repo)), stdin, timeout_s)


def _run(command: list[str], stdin: bytes | None, timeout_s: float) -> bytes:
    try:
        done = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            env=git_environment(),
            timeout=timeout_s,
            check=False,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except FileNotFoundError:
        raise GitError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"git timed out after {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GitError(lines[0] if lines else f"git exited {done.returncode}")
    return done.stdout


def changed_paths(root: Path) -> list[str] | None:
    """Paths with uncommitted changes under `root` (untracked included), or None when `root`
    is not in a git work tree. NUL-separated, so a file name with a newline stays one name."""
    try:
        inside = run_git(root, ["rev-parse", "--is-inside-work-tree"]).decode().strip()
    except GitError:
        return None
    if inside != "true":
        return None
    status = run_git(
        root,
        [
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--no-renames",
            "--ignore-submodules=all",
            "--",
            ".",
        ],
    )
    records = status.decode("utf-8", "surrogateescape").split("\0")
    return [record[3:] for record in records if len(record) > 3]
