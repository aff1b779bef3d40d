"""A run that stopped on what the sandbox lacks, not on what the code does wrong.

Three gaps of the audit's environment end a run before it measures anything, and none is a
defect of the code:
- a missing module: the sandbox runs the script with the interpreter torchdoctor runs under,
  so a `ModuleNotFoundError` for a package the project does not ship usually says that this
  environment lacks the package. It is a defect of the project only when none of its
  dependency manifests lists the package (an undeclared dependency: a fresh install fails the
  same way). A module named like one of the project's own files or folders is the project's,
  and its absence stays the script's failure.
- a file outside the audited folder: the run works on a copy of the folder, so a data file the
  command names elsewhere on this machine (`--data /data/mnist.npz`) is not there, and the
  script's `FileNotFoundError` says where the audit looked, not what the code does.
- no CUDA device: a script that calls `.cuda()` unconditionally stops at once on a machine
  without one; the run then says where the audit ran, not whether the code works.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checks.manifests import Pin, parse_manifests

_NO_MODULE = re.compile(r"No module named '([^']+)'")
_NO_FILE = re.compile(r"No such file or directory: '([^']+)'")
_NO_CUDA = re.compile(
    r"Torch not compiled with CUDA enabled|Found no NVIDIA driver on your system"
    r"|No CUDA GPUs are available|CUDA driver initialization failed"
)
_IMPORT_ERRORS = frozenset({"ModuleNotFoundError", "ImportError"})
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "sklearn": ("scikit-learn",),
    "skimage": ("scikit-image",),
    "cv2": (
        "opencv-python",
        "opencv-python-headless",
        "opencv-contrib-python",
        "opencv-contrib-python-headless",
        "opencv",
        "py-opencv",
    ),
    "PIL": ("pillow",),
    "yaml": ("pyyaml",),
    "bs4": ("beautifulsoup4",),
    "dateutil": ("python-dateutil",),
    "tensorboard": ("tb-nightly",),
    "google": ("protobuf",),
    "Crypto": ("pycryptodome",),
    "attr": ("attrs",),
    "dotenv": ("python-dotenv",),
}
"""Import names whose distribution is named otherwise (besides `python-NAME`, `pyNAME`)."""


class MissingDependency(BaseModel):
    """The package a failed run could not import, and what the project's manifests say of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    module: str
    """The top-level import name (`tensorboard` for `No module named 'tensorboard.summary'`)."""
    declared_at: str | None = None
    """Where a manifest lists it (`requirements.txt:3`); None when none does."""
    manifests: int = 0
    """How many dependency manifests the project has."""

    @property
    def declared(self) -> bool:
        return self.declared_at is not None

    def note(self) -> str:
        """One line for the run's notes: why the run measured nothing, and what to do."""
        said = (
            f", which {self.declared_at} declares"
            if self.declared_at
            else ", which no manifest of the project declares"
        )
        return (
            f"the audit environment lacks the package `{self.module}`{said}: the run stopped "
            "at its import and measured nothing; install the project's dependencies where "
            "torchdoctor runs (or use a sandbox image that has them) and audit again"
        )


def missing_module(error_type: str | None, detail: str) -> str | None:
    """The top-level name of the module an import could not find, from the run's error."""
    if error_type not in _IMPORT_ERRORS:
        return None
    match = _NO_MODULE.search(detail)
    if match is None:
        return None
    top = match.group(1).split(".")[0]
    return top or None


def project_modules(paths: Iterable[str]) -> frozenset[str]:
    """Every name the project's own files could be imported as: each folder and each module
    stem on the way to an audited file (the script's folder is on the path, so any of them)."""
    names: set[str] = set()
    for path in paths:
        parts = PurePosixPath(path).parts
        names.update(parts[:-1])
        if parts:
            names.add(PurePosixPath(parts[-1]).stem)
    return frozenset(names)


def _candidates(module: str) -> set[str]:
    names = {module, f"python-{module}", f"py{module}", *DISTRIBUTIONS.get(module, ())}
    return {canonicalize_name(name) for name in names}


def declaring_pin(module: str, pins: Iterable[Pin]) -> Pin | None:
    """The first manifest entry that installs `module` (by its usual distribution names)."""
    wanted = _candidates(module)
    return next((pin for pin in pins if pin.name in wanted), None)


def missing_dependency(
    error_type: str | None,
    detail: str,
    paths: Iterable[str],
    manifests: Mapping[str, str],
) -> MissingDependency | None:
    """What a run's import failure says about the dependencies, or None when the failure is
    not a missing third-party package (another error, or a module of the project itself)."""
    module = missing_module(error_type, detail)
    if module is None or module in project_modules(paths):
        return None
    pin = declaring_pin(module, parse_manifests(manifests))
    return MissingDependency(
        module=module,
        declared_at=f"{pin.file}:{pin.line}" if pin else None,
        manifests=len(manifests),
    )


class OutsidePath(BaseModel):
    """A file the failed run could not open that exists on this machine, outside the copy of
    the audited folder the run worked on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """As the script named it."""
    root: str
    """The audited folder."""

    def note(self) -> str:
        return (
            f"the run cannot see `{self.path}`: it exists on this machine, outside the audited "
            f"folder {self.root}, and the run works on a copy of that folder alone; the run "
            "stopped there and measured nothing: put the data inside the folder (or audit a "
            "folder that holds both) and audit again"
        )


def missing_file(error_type: str | None, detail: str) -> str | None:
    """The file a run could not open, as the script named it, from the run's error."""
    if error_type != "FileNotFoundError":
        return None
    match = _NO_FILE.search(detail)
    return match.group(1) if match else None


def outside_path(error_type: str | None, detail: str, root: Path) -> OutsidePath | None:
    """The missing file of a failed run when it is on this machine outside `root` (the audited
    folder, where the run's copy starts: relative names are read from there)."""
    named = missing_file(error_type, detail)
    if named is None or not is_outside(named, root):
        return None
    return OutsidePath(path=named, root=str(root))


def is_outside(named: str, root: Path) -> bool:
    """Whether the file a script named exists on this machine outside `root`."""
    host = Path(os.path.realpath(root / named))  # an absolute name stays itself
    return host.exists() and not host.is_relative_to(os.path.realpath(root))


class NoCuda(BaseModel):
    """The failed run needed a CUDA device, and the machine the audit ran on has none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    where: str
    """`file:line` of the user's code that asked for the device, or "" when not known."""

    def note(self) -> str:
        at = f" (at {self.where})" if self.where else ""
        return (
            f"the script needs a CUDA device{at} and the audit ran on a machine without one: "
            "the run stopped there and measured nothing; audit on a machine with a GPU, or "
            'give the script a CPU fallback (`"cuda" if torch.cuda.is_available() else "cpu"`)'
        )


def needs_cuda(detail: str) -> bool:
    """Whether a run's error says CUDA is missing from this machine (not a CUDA error of the
    code's own: an illegal memory access or an out-of-memory has a device to fail on)."""
    return _NO_CUDA.search(detail) is not None
