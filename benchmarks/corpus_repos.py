"""The benchmark corpus: public repositories pinned by commit, materialised outside this repo.

`benchmarks/corpus/manifest.toml` names each repository and its commit. A tree is exported
from a local mirror (`<mirror>/<owner>+<name>/repo`, a bare git directory, as the session's
fetch tool leaves them) or, failing that, cloned from its URL; either way it lands in a cache
folder outside the repository, so fetched code is never committed. Shared by
`precision.py` and `recall.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
MANIFEST = CORPUS / "manifest.toml"
DEFAULT_MIRROR = Path(os.environ.get("TORCHDOCTOR_MIRROR", "/work/.mirror"))
DEFAULT_CACHE = Path(
    os.environ.get("TORCHDOCTOR_CORPUS_CACHE", Path.home() / ".cache" / "torchdoctor-corpus")
)
# What an audit reads: mirrors lack large data files, so only these are exported.
AUDITED_SUFFIXES = (".py", ".ipynb", ".toml", ".cfg", ".yml", ".yaml", ".md")
PEER_PREFIXES = ("bandit-", "ruff-", "torchfix-", "detect-secrets-", "mypy-", "pip-audit-")


@dataclass(frozen=True)
class Repo:
    name: str
    commit: str
    url: str
    about: str

    @property
    def slug(self) -> str:
        return self.name.replace("/", "+")


def load_manifest(path: Path = MANIFEST) -> list[Repo]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return [Repo(r["name"], r["commit"], r["url"], r.get("about", "")) for r in data["repo"]]


def mirror_git_dir(mirror: Path, repo: Repo) -> Path | None:
    """The repository's bare git directory in the mirror, or None when it was never fetched."""
    base = mirror / repo.slug / "repo"
    for candidate in (base / ".git", base):
        if (candidate / "HEAD").is_file():
            return candidate
    return None


def _wanted(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(AUDITED_SUFFIXES) or name.startswith("requirements")


def export_tree(
    git_dir: Path, commit: str, out: Path, wanted: Callable[[str], bool] = _wanted
) -> None:
    """Write the `wanted` files at `commit` under `out` (by default the audited kinds; blobs the
    mirror lacks skipped; links and paths that would leave `out` never written)."""
    listing = subprocess.run(
        ["git", f"--git-dir={git_dir}", "ls-tree", "-r", "-z", commit],
        check=True,
        capture_output=True,
    ).stdout.decode("utf-8", "replace")
    blobs: list[tuple[str, str]] = []
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob" and mode in ("100644", "100755") and wanted(path):
            blobs.append((sha, path))
    request = "".join(f"{sha}\n" for sha, _ in blobs).encode()
    stream = subprocess.run(
        ["git", f"--git-dir={git_dir}", "cat-file", "--batch"],
        input=request,
        check=True,
        capture_output=True,
    ).stdout
    offset = 0
    root = out.resolve()
    for _, path in blobs:
        newline = stream.index(b"\n", offset)
        header = stream[offset:newline].split()
        offset = newline + 1
        if header[-1] == b"missing":
            continue
        size = int(header[2])
        body = stream[offset : offset + size]
        offset += size + 1
        target = (out / path).resolve()
        if not target.is_relative_to(root):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)


def materialise(repo: Repo, mirror: Path = DEFAULT_MIRROR, cache: Path = DEFAULT_CACHE) -> Path:
    """The repository's tree at its pinned commit, exported once into the cache."""
    tree = cache / f"{repo.slug}-{repo.commit[:12]}"
    if (tree / ".complete").is_file():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{repo.slug}-", dir=cache))
    git_dir = mirror_git_dir(mirror, repo)
    if git_dir is None:
        clone = staging / ".clone"
        subprocess.run(["git", "clone", "--quiet", "--bare", repo.url, str(clone)], check=True)
        git_dir = clone
    out = staging / "tree"
    out.mkdir()
    export_tree(git_dir, repo.commit, out)
    (out / ".complete").write_text(repo.commit, encoding="utf-8")
    if tree.exists():
        subprocess.run(["rm", "-rf", str(tree)], check=True)
    out.rename(tree)
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    return tree


def audit_json(target: Path, *extra: str, linters: bool = True) -> dict[str, object]:
    """One offline `torchdoctor audit` (no runs), its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "torchdoctor",
            "audit",
            str(target),
            "--format",
            "json",
            "--no-ledger",
            "--offline",
            "--output",
            str(report),
            *extra,
        ]
        if not linters:
            command.append("--no-linters")
        env = {**os.environ, "TORCHDOCTOR_HOME": tmp}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode not in (0, 1) or not report.is_file():
            failure = f"({done.returncode}): {done.stderr[-400:]}"
            raise RuntimeError(f"audit of {target} failed {failure}")
        loaded: dict[str, object] = json.loads(report.read_text(encoding="utf-8"))
        return loaded


def is_peer(rule: str) -> bool:
    return rule.startswith(PEER_PREFIXES)


def stable_order(key: str, seed: str) -> str:
    """A seeded pseudo-random sort key: the same sample on every machine."""
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
