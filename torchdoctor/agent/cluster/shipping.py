"""A job's workspace shipped to the node that runs it: packed here as an in-memory tar
(links kept as links, nothing followed), unpacked there under tarfile's `data` filter, which
refuses members that would land outside the folder, links out of it, and devices."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

from torchdoctor.sandbox.workspace import SKIPPED_NAMES, remove_workspace


def pack(workspace: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(workspace, arcname=workspace.name, filter=_skip_caches)
    return buffer.getvalue()


def _skip_caches(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if Path(member.name).name in SKIPPED_NAMES else member


def unpack(data: bytes) -> tuple[Path, Path]:
    """(the new folder to remove afterwards, the workspace inside it). Raises
    `tarfile.FilterError` for a member the filter refuses (nothing is left behind)."""
    if not hasattr(tarfile, "data_filter"):  # PEP 706: Python 3.11.4+ (and backports)
        raise tarfile.TarError("this Python's tarfile has no data filter: not unpacked")
    folder = Path(tempfile.mkdtemp(prefix=f"td-ws-{os.getpid()}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
            names = archive.getnames()
            archive.extractall(folder, filter="data")
    except BaseException:
        remove_workspace(folder)
        raise
    top = names[0].split("/")[0] if names else "workspace"
    return folder, folder / top
