"""Where a finding's file is, as the CI runner sees it: relative to the working directory.

A report's finding paths are relative to the audited root; annotations and test reports are
read from the repository root (the directory the workflow runs in), so they need the root's
own path in front.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

from torchdoctor.agent.models import AuditReport, Finding


def report_root(report: AuditReport) -> Path:
    target = Path(report.target.path)
    return target if report.target.kind == "folder" else target.parent


def workdir_path(report: AuditReport, finding: Finding) -> str:
    """The finding's file relative to the working directory when it lies under it."""
    path = Path(os.path.normpath(report_root(report) / finding.file))
    if path.is_absolute():
        try:
            path = path.relative_to(Path.cwd())
        except ValueError:
            return path.as_posix()
    return posixpath.normpath(path.as_posix())
