"""per-item-file-io: `Dataset.__getitem__` parses a whole file for every sample."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.patterns import class_methods
from torchdoctor.agent.models import Severity

_PARSERS = frozenset(
    {
        "pandas.read_csv",
        "pandas.read_json",
        "pandas.read_parquet",
        "pandas.read_excel",
        "pandas.read_pickle",
        "json.load",
        "json.loads",
        "pickle.load",
        "numpy.load",
        "numpy.loadtxt",
        "numpy.genfromtxt",
        "torch.load",
        "yaml.safe_load",
        "yaml.load",
        "csv.reader",
        "csv.DictReader",
        "builtins.open",
    }
)


class PerItemFileIo(Rule):
    """Detects a dataset's `__getitem__` that loads or parses a file that does not depend on
    the requested index (a literal path or a `self.` attribute): `pd.read_csv(self.csv)`,
    `json.load(open("labels.json"))`.

    Why it matters: the same file is read and parsed again for every sample — for a CSV of N
    rows, an epoch costs O(N²) parsing; the GPU waits on the data loader, burning time and
    energy, and the storage is hammered.

    Example:
        def __getitem__(self, i):
            table = pd.read_csv(self.csv_path)
            return table.iloc[i].values

    Fix: parse once in `__init__` (or lazily cache it on first use per worker), and for large
    data use a format with random access (memory-mapped NumPy, Parquet row groups, LMDB,
    WebDataset shards).
    """

    id = "per-item-file-io"
    point = 8
    severity = Severity.MEDIUM
    title = "Whole-file parsing in __getitem__"
    items: ClassVar[tuple[str, ...]] = ("8.3",)

    def finish(self, ctx: ModuleContext) -> None:
        if "__getitem__" not in ctx.source:
            return
        for cls in nodes_of(ctx, ast.ClassDef):
            if not isinstance(cls, ast.ClassDef):
                continue
            getitem = class_methods(cls).get("__getitem__")
            if getitem is None:
                continue
            for node in walk_tree(getitem):
                if isinstance(node, ast.Call) and self._loads_fixed_file(ctx, node):
                    ctx.report(
                        self,
                        node,
                        "the same file is parsed again for every sample: load it once in __init__",
                    )

    @staticmethod
    def _loads_fixed_file(ctx: ModuleContext, call: ast.Call) -> bool:
        qual = ctx.call_qualname(call)
        if qual is None and isinstance(call.func, ast.Name) and call.func.id == "open":
            qual = "builtins.open"
        if qual not in _PARSERS or not call.args:
            return False
        source = call.args[0]
        if isinstance(source, ast.Call):  # json.load(open(path)): look at the path
            return qual != "builtins.open" and PerItemFileIo._loads_fixed_file(ctx, source)
        if isinstance(source, ast.Constant):
            return isinstance(source.value, str)
        return (
            isinstance(source, ast.Attribute)
            and isinstance(source.value, ast.Name)
            and source.value.id == "self"
        )
