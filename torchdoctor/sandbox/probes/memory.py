"""Memory growth across steps and autograd graphs kept alive between steps (item 1.4), and
the CUDA caching allocator's fragmentation (item 6.7).

Graph retention is measured, not guessed: at a few scheduled steps the probe walks the live
tensors that still carry a `grad_fn` and counts the distinct autograd nodes they reach. A
loop that keeps a reference to each step's graph (`total += loss`) makes that count grow
with every step; a healthy loop keeps it flat.
"""

from __future__ import annotations

import ast
import collections
import itertools
import os
import sys
import warnings
from types import FrameType, ModuleType
from typing import Any

import torch

from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.tensors import cuda_in_use

NODE_CAP = 200_000
FRAGMENTATION_MIN_BYTES = 256 * 2**20
FRAGMENTATION_RATIO = 0.25


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _reachable_nodes(roots: list[Any], cap: int = NODE_CAP) -> int:
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack and len(seen) < cap:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        for child, _ in getattr(node, "next_functions", ()):
            if child is not None and id(child) not in seen:
                stack.append(child)
    return len(seen)


_TENSOR_TYPES: dict[type, bool] = {}
_CONTAINERS = (list, tuple, set, frozenset, collections.deque)
WALK_DEPTH = 3
WALK_BUDGET = 50_000


def _is_graph_tensor_type(kind: type) -> bool:
    """Cached by type: `isinstance(x, torch.Tensor)` runs a Python `__instancecheck__`."""
    known = _TENSOR_TYPES.get(kind)
    if known is None:
        known = issubclass(kind, torch.Tensor) and not issubclass(kind, torch.nn.Parameter)
        _TENSOR_TYPES[kind] = known
    return known


def _user_namespaces(user_files: UserFiles) -> list[tuple[str, dict[str, Any]]]:
    """Locals of the user's frames on the current stack, and their globals."""
    namespaces: list[tuple[str, dict[str, Any]]] = []
    seen_globals: set[int] = set()
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if user_files.contains(frame.f_code.co_filename):
            if frame.f_code.co_name != "<module>":
                namespaces.append(("", frame.f_locals))
            if id(frame.f_globals) not in seen_globals:
                seen_globals.add(id(frame.f_globals))
                namespaces.append(("", frame.f_globals))
        frame = frame.f_back
    return namespaces


def _children(obj: Any, user_files: UserFiles) -> list[tuple[str, Any]]:
    kind = type(obj)
    if kind in _CONTAINERS:
        return [(f"[{i}]", item) for i, item in enumerate(obj)]
    if kind is dict:
        return [(f"[{k!r}]", v) for k, v in obj.items()]
    state = getattr(obj, "__dict__", None)
    if not isinstance(state, dict) or isinstance(obj, type | ModuleType):
        return []
    code = getattr(getattr(kind, "__init__", None), "__code__", None)
    if code is None or not user_files.contains(code.co_filename):
        return []  # only the user's own objects are opened (a trainer, a logger...)
    out = [(f".{k}", v) for k, v in state.items() if not k.startswith("_")]
    if isinstance(obj, torch.nn.Module):
        out = [(k, v) for k, v in out if not isinstance(v, torch.nn.Module)]
    return out


def graph_roots(user_files: UserFiles) -> list[tuple[str, torch.Tensor]]:
    """Tensors with a `grad_fn` reachable from the user's variables (a few levels into lists,
    dicts and the user's own objects), with the access path that reaches each one."""
    roots: list[tuple[str, torch.Tensor]] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [
        (name, value, 0)
        for _, namespace in _user_namespaces(user_files)
        for name, value in list(namespace.items())
        if not name.startswith("__")
    ]
    budget = WALK_BUDGET
    while stack and budget > 0:
        path, obj, depth = stack.pop()
        budget -= 1
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if _is_graph_tensor_type(type(obj)):
            if obj.grad_fn is not None:
                roots.append((path, obj))
            continue
        if depth < WALK_DEPTH:
            stack.extend(
                (path + suffix, child, depth + 1) for suffix, child in _children(obj, user_files)
            )
    return roots


def scan_schedule(step: int) -> bool:
    """Steps at which the graph scan runs: the first eight, then powers of two."""
    return step < 8 or (step & (step - 1)) == 0


class MemoryProbe:
    def __init__(self, user_files: UserFiles) -> None:
        self.user_files = user_files
        self.per_step: dict[int, int] = {}
        self.graph_nodes: list[dict[str, int]] = []
        self.source = "rss"
        self.culprit: dict[str, Any] | None = None

    def end_step(self, step: int, sampled: bool = True) -> None:
        """Memory in use after `step`, at sampled and scheduled steps only: a CUDA read builds
        the allocator's whole statistics and an RSS read opens a file (each a cost on every
        step of a fast loop); the growth slope needs no more. A graph scan at the scheduled
        steps."""
        scheduled = scan_schedule(step)
        if sampled or scheduled:
            if cuda_in_use():
                self.source = "cuda-allocated"
                self.per_step[step] = torch.cuda.memory_allocated()
            else:
                self.per_step[step] = rss_bytes()
        if not scheduled:
            return
        with warnings.catch_warnings():
            # walking the script's objects must not show up as the user's warnings
            warnings.simplefilter("ignore")
            self._scan(step)

    def _scan(self, step: int) -> None:
        roots = graph_roots(self.user_files)
        nodes = _reachable_nodes([t.grad_fn for _, t in roots])
        self.graph_nodes.append({"step": step, "tensors": len(roots), "nodes": nodes})
        if self.culprit is None and self._rising():
            self.culprit = self._culprit(roots)  # now, while the script's frames are alive

    def _rising(self) -> bool:
        counts = [g["nodes"] for g in self.graph_nodes if g["step"] >= 1]
        return len(counts) >= 3 and all(b > a for a, b in itertools.pairwise(counts))

    def retention(self) -> dict[str, Any] | None:
        """The growing graph and the variable holding it, when node counts grow each scan."""
        if not self._rising():
            return None
        samples = [g for g in self.graph_nodes if g["step"] >= 1]
        span = samples[-1]["step"] - samples[0]["step"]
        growth = (samples[-1]["nodes"] - samples[0]["nodes"]) / span if span else 0.0
        culprit = self.culprit or {"variable": None, "file": None, "line": None}
        return {"nodes_per_step": growth, **culprit}

    def _culprit(self, roots: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
        sized = [(_reachable_nodes([t.grad_fn], cap=20_000), path) for path, t in roots]
        if not sized:
            return {"variable": None, "file": None, "line": None}
        size, path = max(sized)
        name = path.split(".")[0].split("[")[0]
        file, line = self._assignment(name) if name else (None, None)
        return {"variable": path, "file": file, "line": line, "graph_nodes": size}

    def _assignment(self, name: str) -> tuple[str | None, int | None]:
        """Where `name` is accumulated (`name += ...`) in the script, else first assigned."""
        script = self.user_files.script
        try:
            with open(script, encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
        except (OSError, SyntaxError):
            return None, None
        assigned: int | None = None
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.AugAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
            ):
                return self.user_files.relpath(script), node.lineno
            if (
                isinstance(node, ast.Assign)
                and assigned is None
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            ):
                assigned = node.lineno
        return (self.user_files.relpath(script), assigned) if assigned else (None, None)

    def report(self) -> dict[str, Any]:
        steps = sorted(self.per_step)
        values = [self.per_step[s] for s in steps]
        slope = _slope([float(s) for s in steps[1:]], [float(v) for v in values[1:]])
        return {
            "source": self.source,
            "steps": steps,
            "bytes": values,
            "slope_bytes_per_step": slope,
            "graph_scans": self.graph_nodes,
            "retention": self.retention(),
        }


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


class VramWatch:
    """Keeps the most fragmented allocator state seen while the script's tensors were alive.

    The evidence document is written after the script's frames are gone, when freed blocks
    have merged back; a snapshot taken at each flush and at the last step is what the run
    really looked like.
    """

    def __init__(self) -> None:
        self.worst: dict[str, Any] | None = None

    def observe(self) -> None:
        current = vram_report()
        if current is None:
            return
        if self.worst is None or _severity(current) > _severity(self.worst):
            self.worst = current

    def report(self) -> dict[str, Any] | None:
        self.observe()
        return self.worst


def _severity(snapshot: dict[str, Any]) -> tuple[bool, int]:
    return bool(snapshot["fragmented"]), int(snapshot["inactive_split_bytes"])


def vram_report() -> dict[str, Any] | None:
    """Reserved vs allocated, inactive split bytes and allocator retries, with advice."""
    if not cuda_in_use():
        return None
    stats = torch.cuda.memory_stats()
    reserved = int(stats.get("reserved_bytes.all.current", 0))
    allocated = int(stats.get("allocated_bytes.all.current", 0))
    inactive = int(stats.get("inactive_split_bytes.all.current", 0))
    retries = int(stats.get("num_alloc_retries", 0))
    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "") + os.environ.get("PYTORCH_ALLOC_CONF", "")
    expandable = "expandable_segments:True" in conf
    gap = reserved - allocated
    fragmented = retries > 0 or (
        gap >= FRAGMENTATION_MIN_BYTES
        and reserved > 0
        and gap / reserved >= FRAGMENTATION_RATIO
        and inactive >= FRAGMENTATION_MIN_BYTES
    )
    return {
        "reserved_bytes": reserved,
        "allocated_bytes": allocated,
        "peak_allocated_bytes": int(stats.get("allocated_bytes.all.peak", 0)),
        "peak_reserved_bytes": int(stats.get("reserved_bytes.all.peak", 0)),
        "inactive_split_bytes": inactive,
        "num_alloc_retries": retries,
        "num_ooms": int(stats.get("num_ooms", 0)),
        "expandable_segments": expandable,
        "fragmented": bool(fragmented and not expandable),
        "advice": (
            "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
            if fragmented and not expandable
            else ""
        ),
    }
