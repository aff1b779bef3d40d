"""Peer findings that torchdoctor's own reading of the code rules out.

A peer linter sees one call at a time; torchdoctor reads the code around it (and the project's
declared torch floor). These cases are decided here, from the flagged line's syntax tree or
the file's place in the project:

- TorchFix TOR401 ("DataLoader running synchronously") on a call that passes `**kwargs`:
  `num_workers` may be (and in mature code usually is) inside the unpacked dict, which
  TorchFix cannot see; or in a pytest module, whose loaders feed a few rows to a unit test
  and would only pay the workers' start-up; or over an in-memory `TensorDataset` (by call,
  or a name its scope binds only to one), where a batch is an index into loaded tensors; or
  bound to a name its scope only counts (`len(loader_for_count)` to size a schedule, never
  iterated: a loader that is also iterated stays reported).
- bandit B105 ("hard-coded password") where the only word bandit matched is "token" and the
  token is a tokenizer's (a special token such as `bos_token`, a `*_token_id`, or a value no
  secret looks like: empty, a number, `<...>` or `[...]` markup, a short string); or where
  the string spells the name it is bound to (`_EP_TOKEN_EXCHANGE = "EP_token_exchange"`, a
  tag), or is the name of a compiler or profiler pass (`pass_name = "enc"`, `jit_pass_name ==
  "auto_bucketing"`: an identifier without digits). `db_pass = "admin"` stays.
- bandit B107 (hard-coded password as a default) where every default bandit matched is such
  a tokenizer token (`bos_token="<s>"`, `pad_token="[PAD]"` in a tokenizer's `__init__`), and
  bandit B106 (as a keyword argument) likewise (`dict(pad_token="[PAD]")`,
  `eos_token="<eod>"` given to a tokenizer).
- bandit B311 ("random is not for cryptography") where nothing in the statement or the
  enclosing function names a secret, token, password, key, salt or nonce: in training code,
  `random` samples data, crops and flips.
- bandit B602 (`shell=True`) where the command is one string literal, with nothing
  interpolated: no outside value reaches the shell (bandit itself calls it "seems safe").
- ruff E722 (bare `except:`) after a handler of the same `try` that re-raises
  `KeyboardInterrupt`: the interrupt is let through on purpose and the rest is meant to be
  caught (a download retry loop).
- detect-secrets "Hex High Entropy String" where every hex literal on the line is bound to a
  name that says it is a content digest (`MD5_MAP`, `AT_HASH`, `sha256`, `checksum`,
  `commit`; also the name a setter gives it: a test's `monkeypatch.setattr(Dataset, "md5",
  "071e...")` or `monkeypatch.setitem(Dataset.metadata["train"], "md5", "...")`, torchgeo)
  and to no secret's name (`monkeypatch.setattr(Client, "api_token", "...")` stays), or
  where the line's comment says so (`self.version = '701eb7...'  # MD5 hash of the intended
  dataset file`): a checksum or a torrent/commit hash is public by nature.
- detect-secrets "Hex High Entropy String" where every hex literal on the line is bound to a
  name that says it locates a file or a run (`weights_path`, `artifact_id`, `run_id`) and to
  no secret's name: an experiment tracker's artifact id.
- detect-secrets "Basic Auth Credentials" where every URL on the line carries the field names
  as its credentials (`rtsp://username:password@host`, `<user>:<password>`): a usage example.
- detect-secrets "Base64/Hex High Entropy String" where every such literal on the line is a
  symbol set (`'SEPabcdefghijklmnopqrstuvwxyz'`, a char-RNN's or OCR model's alphabet,
  `'0123456789abcdef'`): it holds a run of eight or more consecutive letters or digits, which
  a random secret of that length practically never does, and is bound to no secret's name.
- detect-secrets "Base64 High Entropy String" where every long literal on the line is a key
  or the value of a table entry whose value is the relative path of a published file
  (`"COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl"`, a model
  zoo); and "Hex High Entropy String" where every hex literal is the expected value a digest
  is checked against (`assert_expected_inline(model_hash, "135abf...")`,
  `sha256(b).hexdigest() == "..."`), beside nothing named like a secret.
- detect-secrets "Base64 High Entropy String" where every long literal on the line is the
  value of a file name in a table (`{"Set5.zip": "1RtyIeUFT..."}`) or of a file-id key
  (`'gdrive_id': '15tUx-...'`): a download script's or a model zoo's public file ids.
- bandit B614 / TorchFix TOR102 (`torch.load` without `weights_only`) in a pytest module,
  which reads back what it wrote (as torchdoctor's own loading rules, `test_scope`); or inside
  `with torch.serialization.safe_globals([...])` and without `weights_only=False`: the
  allowlist exists only for the weights-only unpickler, so the load is weights-only; or
  without `weights_only` and `pickle_module` in a project whose manifests allow no torch older
  than 2.6, where weights-only is the default everywhere the code runs.

- detect-secrets "Secret Keyword" where every string on the line is a placeholder word
  (`client_keys='default'`, `'none'`, `''`, an OpenAI-compatible local server's
  `api_key = "EMPTY"`), markup (`<API_KEY>`, `${TOKEN}`) or a masked key (`"sk-******"`, also
  on a commented-out example configuration).
- TorchFix TOR101 (a deprecated function) on the fallback branch of a compatibility check
  whose other branch calls the replacement (`if TORCH_GE_1_8_0: torch.linalg.qr(...) else:
  torch.qr(...)`), as deprecated-torch-api reads it.
- ruff F821 (undefined name) where the name is on the line only inside a string annotation
  (a forward reference such as `Union["optuna.Trial", ...]`, never evaluated), or in a module
  that runs `exec` at its top level (setup.py's `exec(version_file.read())`).
- bandit B301 (`pickle.loads`) on what `dumps` makes on the same line (`loads(dumps(obj))`,
  a deep copy through pickle: nothing from outside is read).
- bandit B301 (`pickle.loads`) on the bytes of a tensor (`buffer.cpu().numpy().tobytes()`)
  in a function that pickles its own object into it (`pickle.dumps`): the broadcast or
  `all_gather` of arbitrary objects, where each process unpickles what another process of the
  same job pickled.
- TorchFix TOR003 (`checkpoint` without `use_reentrant`) on a call that unpacks `**kwargs`
  which the same function fills with `use_reentrant` (`kwargs.setdefault("use_reentrant",
  True)`), and bandit B614 / TorchFix TOR102 on a `torch.load` unpacking a dict the function
  fills with `weights_only` (whisper's `kwargs = {"weights_only": True} if ... else {}`).

- bandit B615 (a Hugging Face download without `revision=`) where the repository comes from
  outside the code on every download of the line: a parameter of the enclosing function (or
  of a function around it), an attribute or entry of a configuration
  (`args.model_name_or_path`, also `a or b` of such values), a path built by a call, or a
  local name bound only to such values (`text_model = args.text_model`); or where
  `load_dataset` runs a builder packaged with `datasets` on local files (`"parquet"`,
  `"json"`). A literal hub name, or a name bound to one, stays reported.

A ruled-out finding is kept as context for the reasoner, with the reason; it is no finding.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import deque
from collections.abc import Callable, Iterator

from torchdoctor.agent.checks.compat_fallback import (
    on_fallback_branch,
    replacement_of,
    string_arguments,
)
from torchdoctor.agent.checks.data.torch_api import format_version, rows_by_name, torch_api
from torchdoctor.agent.checks.safe_globals import within_safe_globals
from torchdoctor.agent.checks.smoke_tests import is_test_module
from torchdoctor.agent.models import Evidence

_SECURITY_WORDS = re.compile(
    r"secret|token|passw|passwd|salt|nonce|otp|csrf|session|api_?key|private|crypt|auth",
    re.IGNORECASE,
)
_DIGEST_WORDS = re.compile(r"hash|md5|sha\d*|checksum|digest|crc|commit|revision", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-fA-F]{16,}")
_ORDERED_SYMBOLS = ("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789")
_SYMBOL_RUN = 8
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)


class PeerVeto:
    """Decides, per peer finding, whether the code rules it out; parses each file once."""

    def __init__(
        self, text_of: Callable[[str], str | None], torch_floor: tuple[int, int] | None = None
    ) -> None:
        self._text_of = text_of
        self._checks = dict(_CHECKS)
        flip = torch_api().default_change("torch.load", "weights_only").changed
        if torch_floor is not None and torch_floor >= flip:
            for key in _UNSAFE_LOAD:
                self._checks[key] = _load_weights_only_by_default(format_version(flip))
        self._trees: dict[str, _Parsed | None] = {}

    def reason(self, evidence: Evidence) -> str | None:
        """Why this peer finding is wrong here, or None when nothing rules it out."""
        if evidence.file is None or evidence.line is None:
            return None
        code = str(evidence.data.get("code", ""))
        by_path = _PATH_CHECKS.get((evidence.source, code))
        if by_path is not None and (why := by_path(evidence.file)):
            return why
        by_line = _LINE_CHECKS.get((evidence.source, code))
        if by_line is not None and (why := by_line(self._line(evidence.file, evidence.line))):
            return why
        if (evidence.source, code) == ("ruff", "F821"):
            return self._undefined_name(evidence)
        if (evidence.source, code) == ("torchfix", "TOR101"):
            return self._deprecated_fallback(evidence)
        check = self._checks.get((evidence.source, code))
        if check is None:
            return None
        parsed = self._parsed(evidence.file)
        if parsed is None:
            return None
        return check(parsed.on_line(evidence.line), parsed.parents)

    def _undefined_name(self, evidence: Evidence) -> str | None:
        """ruff F821 where the name is never evaluated (only in a string annotation, a
        forward reference: `trial: Union["optuna.Trial", Dict]`) or where the module defines
        names through `exec` (spinningup's setup.py: `exec(version_file.read())`, then
        `version=__version__`)."""
        found = re.search(r"Undefined name `([^`]+)`", evidence.message)
        parsed = self._parsed(evidence.file or "")
        if found is None or parsed is None or evidence.line is None:
            return None
        name = found.group(1)
        tree = parsed.tree
        if any(
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "exec"
            for stmt in tree.body
            if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            for node in ast.walk(stmt)
        ):
            return f"the module runs exec() at its top level, which may define `{name}`"
        on_line = list(parsed.on_line(evidence.line))
        if any(isinstance(n, ast.Name) and n.id == name for n in on_line):
            return None
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        if any(
            isinstance(n, ast.Constant) and isinstance(n.value, str) and pattern.search(n.value)
            for n in on_line
        ):
            return f"`{name}` appears only in a string annotation (a forward reference), never run"
        return None

    def _deprecated_fallback(self, evidence: Evidence) -> str | None:
        """TorchFix TOR101 (a deprecated function) on the fallback branch of a compatibility
        check whose other branch calls the replacement (`if TORCH_GE_1_8_0: torch.linalg.qr
        else: torch.qr`): deprecated-torch-api's own reading (`compat_fallback`)."""
        found = re.search(r"deprecated function ([\w.]+)", evidence.message)
        row = rows_by_name("deprecated").get(found.group(1)) if found else None
        replacement = replacement_of(row) if row is not None else None
        parsed = self._parsed(evidence.file or "")
        if replacement is None or parsed is None or evidence.line is None or found is None:
            return None
        name, literals = replacement
        tail = name.removeprefix("torch.")
        called = found.group(1).rsplit(".", 1)[-1]

        def is_replacement(call: ast.Call) -> bool:
            text = ast.unparse(call.func)
            named = text == tail or text.endswith("." + tail)
            return named and literals <= string_arguments(call)

        calls = _calls_named(parsed.on_line(evidence.line), called)
        if calls and all(on_fallback_branch(c, parsed.parents.get, is_replacement) for c in calls):
            return f"the fallback branch of a compatibility check whose other branch calls {name}"
        return None

    def _line(self, file: str, line: int) -> str:
        lines = (self._text_of(file) or "").splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""

    def _parsed(self, file: str) -> _Parsed | None:
        if file not in self._trees:
            text = self._text_of(file)
            try:
                tree = ast.parse(text) if text is not None else None
            except (SyntaxError, ValueError, RecursionError):
                tree = None
            self._trees[file] = None if tree is None else _Parsed(tree)
        return self._trees[file]


class _Parsed:
    """A file's tree with each node's parent and the nodes on each line, found in one walk
    (each peer finding looks at one line: a walk of the whole tree per finding cost more than
    the file's parse)."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        self._by_line: dict[int, list[ast.AST]] = {}
        todo: deque[ast.AST] = deque([tree])
        while todo:  # `ast.walk`'s order, which the nodes of a line keep
            node = todo.popleft()
            children = list(ast.iter_child_nodes(node))
            for child in children:
                self.parents[child] = node
            todo.extend(children)
            start = getattr(node, "lineno", None)
            if start is not None:
                end = getattr(node, "end_lineno", None) or start
                for line in range(start, end + 1):
                    self._by_line.setdefault(line, []).append(node)

    def on_line(self, line: int) -> Iterator[ast.AST]:
        """The nodes that span `line`, in `ast.walk` order."""
        return iter(self._by_line.get(line, ()))


def _calls_named(nodes: Iterator[ast.AST], name: str) -> list[ast.Call]:
    return [node for node in nodes if isinstance(node, ast.Call) and _terminal(node.func) == name]


def _terminal(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _loader_with_star_kwargs(nodes: Iterator[ast.AST], _: dict[ast.AST, ast.AST]) -> str | None:
    for call in _calls_named(nodes, "DataLoader"):
        if any(keyword.arg is None for keyword in call.keywords):
            return (
                "the DataLoader receives **kwargs: num_workers may be set inside the unpacked "
                "dict, which TorchFix cannot see"
            )
    return None


def _loader_over_in_memory_tensors(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    """`DataLoader(TensorDataset(...))`, or of a name the enclosing function (or module)
    binds only to `TensorDataset(...)` calls (transfer-learning-conv-ai's `train_dataset,
    valid_dataset = TensorDataset(*train), TensorDataset(*valid)`): each batch is an index
    into tensors already in memory, which worker processes would only copy through shared
    memory."""
    for call in _calls_named(nodes, "DataLoader"):
        dataset = call.args[0] if call.args else None
        dataset = next((k.value for k in call.keywords if k.arg == "dataset"), dataset)
        if dataset is None:
            continue
        if _tensor_dataset(dataset) or (
            isinstance(dataset, ast.Name) and _bound_to_tensor_datasets(dataset, parents)
        ):
            return (
                "the DataLoader reads an in-memory TensorDataset: a batch is an index into "
                "tensors already loaded, workers would only copy them between processes"
            )
    return None


def _loader_only_counted(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """`loader = DataLoader(...)` whose name its scope reads only as `len(loader)`
    (minimind's `loader_for_count`, built to size a learning-rate schedule): never iterated,
    no batch is ever loaded, so workers would do nothing."""
    for call in _calls_named(nodes, "DataLoader"):
        statement = parents.get(call)
        if not (
            isinstance(statement, ast.Assign)
            and len(statement.targets) == 1
            and isinstance(statement.targets[0], ast.Name)
        ):
            continue
        name = statement.targets[0].id
        scope: ast.AST | None = statement
        while scope is not None and not isinstance(scope, _SCOPES):
            scope = parents.get(scope)
        if scope is None:
            continue
        reads = [
            node
            for node in ast.walk(scope)
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Load)
        ]
        counted = all(
            isinstance(holder := parents.get(node), ast.Call)
            and isinstance(holder.func, ast.Name)
            and holder.func.id == "len"
            and holder.args == [node]
            for node in reads
        )
        if reads and counted:
            return "the DataLoader is only counted (`len(...)`), never iterated: it loads nothing"
    return None


def _tensor_dataset(value: ast.AST) -> bool:
    return isinstance(value, ast.Call) and _terminal(value.func) == "TensorDataset"


def _bound_to_tensor_datasets(name: ast.Name, parents: dict[ast.AST, ast.AST]) -> bool:
    """`name` is bound in its scope, and only by assignments of a `TensorDataset(...)` call
    (plain, or at its place in a tuple: `a, b = TensorDataset(x), TensorDataset(y)`); any
    other binding (a loop or `with` target, an augmented or annotated assignment) leaves it
    undecided."""
    scope: ast.AST | None = parents.get(name)
    while scope is not None and not isinstance(scope, _SCOPES):
        scope = parents.get(scope)
    if scope is None:
        return False
    values: list[ast.expr | None] = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                values += _assigned_to(target, node.value, name.id)
        elif isinstance(node, ast.For | ast.With | ast.AugAssign | ast.AnnAssign):
            bound = [getattr(node, "target", None)]
            bound += [item.optional_vars for item in getattr(node, "items", [])]
            if any(isinstance(t, ast.Name) and t.id == name.id for t in bound):
                values.append(None)
    return bool(values) and all(v is not None and _tensor_dataset(v) for v in values)


def _assigned_to(target: ast.expr, value: ast.expr, name: str) -> list[ast.expr | None]:
    """What `target = value` binds to `name`: [value], the matching element of a tuple
    value, [None] when unpacked from something else, [] when `name` is not bound here."""
    if isinstance(target, ast.Name):
        return [value] if target.id == name else []
    if isinstance(target, ast.Tuple | ast.List):
        for i, element in enumerate(target.elts):
            if isinstance(element, ast.Name) and element.id == name:
                paired = isinstance(value, ast.Tuple) and len(value.elts) == len(target.elts)
                return [value.elts[i] if paired else None]  # type: ignore[attr-defined]
    return []


def _random_not_for_security(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    found = list(nodes)
    statement = next((n for n in found if isinstance(n, ast.stmt)), None)
    if statement is None:
        return None
    scope: ast.AST | None = statement
    while scope is not None and not isinstance(scope, _SCOPES):
        scope = parents.get(scope)
    words = ast.unparse(statement)
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        words += " " + scope.name
    if _SECURITY_WORDS.search(words):
        return None
    return "random draws data samples or augmentations here; nothing names a secret or token"


def _load_inside_safe_globals(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    for call in _calls_named(nodes, "load"):
        weights_only = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
        if isinstance(weights_only, ast.Constant) and weights_only.value is False:
            continue
        if within_safe_globals(call, parents):
            return (
                "torch.load runs inside torch.serialization.safe_globals: the allowlist is for "
                "the weights-only unpickler, so this load is weights-only"
            )
    return None


_Check = Callable[[Iterator[ast.AST], dict[ast.AST, ast.AST]], str | None]


def _load_weights_only_by_default(since: str) -> _Check:
    """A load that passes neither `weights_only` nor `pickle_module`, in a project whose torch
    floor is `since` or later (else the safe_globals case)."""

    def check(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
        found = list(nodes)
        for call in _calls_named(iter(found), "load"):
            names = {k.arg for k in call.keywords}
            if None not in names and not names & {"weights_only", "pickle_module"}:
                return (
                    f"the project's manifests allow no torch older than {since}, where "
                    "torch.load defaults to weights_only=True: this load is weights-only"
                )
        return _load_weights_only_elsewhere(iter(found), parents)

    return check


def _loader_in_a_test(path: str) -> str | None:
    if is_test_module(path):
        return "a DataLoader in a test module: workers would only add start-up time to the test"
    return None


def _unpickle_in_a_test(path: str) -> str | None:
    if is_test_module(path):
        return (
            "pickle load in a test module: a test reads back the objects it pickled, not an "
            "artifact from elsewhere (test_scope)"
        )
    return None


def _load_in_a_test(path: str) -> str | None:
    if is_test_module(path):
        return (
            "torch.load in a test module: a test reads back the files it wrote, not a "
            "checkpoint from elsewhere (test_scope)"
        )
    return None


_BANDIT_WORDS = re.compile(r"pas+wo?r?d|pass(phrase)?|pwd|token|secrete?", re.IGNORECASE)
_CREDENTIAL_WORDS = re.compile(r"pas+wo?r?d|pass(phrase)?|pwd|secret", re.IGNORECASE)
_VOCABULARY_TOKEN = re.compile(
    r"(bos|eos|pad|unk|sep|cls|mask|dummy|special|start|end|stop|begin|eot|eom|sot|bot|"
    r"im_start|im_end|sentinel)_?tokens?(_?ids?)?$|tokens?_?ids?$",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"^(<.*>|\[.*\])$", re.DOTALL)
_SHORTEST_SECRET = 8


def _tokenizer_token(nodes: Iterator[ast.AST], _: dict[ast.AST, ast.AST]) -> str | None:
    pairs = [(n, v) for n, v in _named_constants(nodes) if _BANDIT_WORDS.search(n)]
    if not pairs:
        return None
    if all(_vocabulary_token(name, value) for name, value in pairs):
        return "a tokenizer's special token or token id, not a credential"
    if all(
        _vocabulary_token(name, value) or _names_itself(name, value) or _pass_name(name, value)
        for name, value in pairs
    ):
        return (
            "the string names a thing, not a credential: a constant spelling its own name "
            '(`_EP_TOKEN_EXCHANGE = "EP_token_exchange"`) or a compiler or profiler pass\'s '
            'name (`pass_name = "enc"`)'
        )
    return None


_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9]*([_-][A-Za-z0-9]+)*$")
# `pass` qualified as a thing that has a name: a compiler, profiler or render pass.
_PASS_NAME = re.compile(r"(^|_)pass(es)?_(name|names|type|kind)$", re.IGNORECASE)


def _names_itself(name: str, value: object) -> bool:
    """`_EP_TOKEN_COUNT_EXCHANGE = "EP_token_count_exchange"`: the value spells the name it
    is bound to (case and leading underscores aside), a tag or key, never a secret."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        return False
    return name.strip("_").lower().replace("-", "_") == value.lower().replace("-", "_")


def _pass_name(name: str, value: object) -> bool:
    """`pass_name = "enc"`, `jit_pass_name == "auto_bucketing"`: `pass` is a pass of a
    compiler or profiler whose name is an identifier (words joined by `_`), not a password."""
    return (
        isinstance(value, str)
        and bool(_PASS_NAME.search(name))
        and bool(_IDENTIFIER.match(value))
        and not any(c.isdigit() for c in value)
    )


def _tokenizer_token_defaults(nodes: Iterator[ast.AST], _: dict[ast.AST, ast.AST]) -> str | None:
    """bandit B107 on a function whose defaults bandit read as passwords: every such default
    is a tokenizer's special token (`bos_token="<s>"`, `pad_token="[PAD]"`, a tokenizer's
    `__init__`)."""
    functions = [n for n in nodes if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if not functions:
        return None
    fn = max(functions, key=lambda f: f.lineno)  # the one whose `def` is on the line
    positional = [*fn.args.posonlyargs, *fn.args.args]
    defaults = fn.args.defaults
    with_defaults = positional[len(positional) - len(defaults) :] if defaults else []
    pairs = [
        (arg.arg, default.value)
        for arg, default in zip(with_defaults, defaults, strict=True)
        if isinstance(default, ast.Constant)
    ]
    pairs += [
        (arg.arg, default.value)
        for arg, default in zip(fn.args.kwonlyargs, fn.args.kw_defaults, strict=True)
        if isinstance(default, ast.Constant)
    ]
    flagged = [(name, value) for name, value in pairs if _BANDIT_WORDS.search(name)]
    if flagged and all(_vocabulary_token(name, value) for name, value in flagged):
        return "the defaults bandit matched are a tokenizer's special tokens, not credentials"
    return None


_FILE_NAME = re.compile(r"^[\w.+-]+\.[A-Za-z][A-Za-z0-9]{1,4}$")


_FILE_ID_KEY = re.compile(r"^(g?drive|gdrive_file|file|download|doc|sheet)_?id$", re.IGNORECASE)
"""Keys that name a hosted file's public id (`gdrive_id`, `file_id`, `drive_id`)."""


# A relative path to a published file: `139173657/model_final_68b088.pkl`, also with a
# timestamped suffix after the extension (`.../e2e_mask_rcnn_R-50-C4_1x.yaml.01_45_57.ZgkA7hPB`).
_RELATIVE_PATH = re.compile(r"^[\w.+-]+(/[\w.+-]+)+$")
_PUBLISHED_FILE = re.compile(
    r"\.(yaml|yml|pkl|pth|pt|ckpt|bin|json|npz|npy|h5|onnx|zip|tar|gz)(\.|$)"
)


def _model_zoo_entries(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """Every long literal on the line is a key or the value of an entry of a table whose
    value is the relative path of a published file (`"COCO-Detection/faster_rcnn_R_50_FPN_3x":
    "137849458/model_final_280758.pkl"`, detectron2's model zoo and Detectron1 catalogue): a
    model's name and its file, public, not a credential."""
    literals = [
        n
        for n in nodes
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) >= 16
    ]
    if not literals:
        return None
    for literal in literals:
        table = parents.get(literal)
        if not isinstance(table, ast.Dict):
            return None
        entry = next(
            (
                (key, value)
                for key, value in zip(table.keys, table.values, strict=True)
                if literal is key or literal is value
            ),
            None,
        )
        if entry is None:
            return None
        key, value = entry
        if not (
            isinstance(value, ast.Constant)
            and isinstance(value.value, str)
            and _RELATIVE_PATH.match(value.value)
            and _PUBLISHED_FILE.search(value.value)
        ):
            return None
        texts = [
            str(key.value) if isinstance(key, ast.Constant) else "",
            *_binding_names(table, parents),
        ]
        if any(_SECURITY_WORDS.search(t) for t in texts):
            return None
    return "a model zoo's entry: a model's name and the path of its published file"


def _download_table_ids(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """Every long literal on the line is the value of a file name in a table (`{"Set5.zip":
    "1RtyIeUFT..."}`, BasicSR's Google Drive download scripts) or of a file-id key
    (`'gdrive_id': '15tUx-gkZ...'`, robustbench's model zoo): a public file id, not a
    secret."""
    literals = [
        n
        for n in nodes
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) >= 16
    ]
    if not literals:
        return None
    for literal in literals:
        names = list(_binding_names(literal, parents))
        # the key it is the value of (the tables above it are named by their content)
        if not names or not (_FILE_NAME.match(names[0]) or _FILE_ID_KEY.search(names[0])):
            return None
        if any(_SECURITY_WORDS.search(name) for name in names):
            return None
    return "the literal is the id a download table gives a file name, not a credential"


def _published_digest(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """Every hex literal on the line is bound to a digest's name (its own, or the name of the
    dict that holds it: `MD5_MAP = {"vgg": "d507..."}`) and to no secret's."""
    names = []
    for node in nodes:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if not _HEX.search(node.value):
            continue
        names.append(" ".join(_binding_names(node, parents)))
    if not names or not all(
        _DIGEST_WORDS.search(n) and not _SECURITY_WORDS.search(n) for n in names
    ):
        return None
    return "a content digest (a checksum, a commit or torrent hash): public, not a credential"


def _symbol_set(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """Every long string literal on the line is an alphabet (a run of consecutive letters or
    digits) bound to no secret's name."""
    literals = [
        node
        for node in nodes
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) >= 12
    ]
    if not literals or not all(
        _has_ordered_run(str(node.value))
        and not any(_SECURITY_WORDS.search(name) for name in _binding_names(node, parents))
        for node in literals
    ):
        return None
    return "a symbol set (an alphabet of consecutive letters or digits), not a credential"


def _has_ordered_run(text: str) -> bool:
    return any(
        ordered[start : start + _SYMBOL_RUN] in text
        for ordered in _ORDERED_SYMBOLS
        for start in range(len(ordered) - _SYMBOL_RUN + 1)
    )


def _digest_or_symbol_set(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    on_line = list(nodes)
    return (
        _published_digest(iter(on_line), parents)
        or _compared_with_a_digest(iter(on_line), parents)
        or _artifact_identifier(iter(on_line), parents)
        or _symbol_set(iter(on_line), parents)
    )


def _compared_with_a_digest(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    """Every hex literal on the line is the expected value a digest is checked against: an
    argument of a call, or an operand of a comparison, beside a value named like a digest and
    like no secret (`assert_expected_inline(model_hash, "135abf...")` in torchtitan's
    determinism tests, `assert sha256(data).hexdigest() == "9e3c..."`)."""
    literals = [
        n
        for n in nodes
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and _HEX.search(n.value)
    ]
    if not literals:
        return None
    for literal in literals:
        holder = parents.get(literal)
        if isinstance(holder, ast.Call) and literal in holder.args:
            others = [a for a in holder.args if a is not literal]
        elif isinstance(holder, ast.Compare):
            others = [o for o in (holder.left, *holder.comparators) if o is not literal]
        else:
            return None
        texts = [ast.unparse(o) for o in others if not isinstance(o, ast.Constant)]
        if not any(_DIGEST_WORDS.search(t) for t in texts) or any(
            _SECURITY_WORDS.search(t) for t in texts
        ):
            return None
    return "the expected value of a digest the code checks (a hash in a test), not a credential"


_ARTIFACT_WORDS = re.compile(
    r"path|file|weights|checkpoint|ckpt|artifact|experiment|run_?id|uuid|model_?id", re.IGNORECASE
)


def _artifact_identifier(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """Every hex literal on the line is bound to a name that says it locates a file or a run
    and to no secret's (`weights_path = "d8b4687d..."`, an experiment tracker's artifact id in
    ignite's segmentation configs): an identifier, public like a path."""
    names = [
        " ".join(_binding_names(node, parents))
        for node in nodes
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _HEX.search(node.value)
    ]
    if not names or not all(
        _ARTIFACT_WORDS.search(n) and not _SECURITY_WORDS.search(n) for n in names
    ):
        return None
    return "the hex literal names a file or a run (an artifact id), not a credential"


def _binding_names(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> Iterator[str]:
    """The names a literal is bound to: assignment targets, dict keys, and the attribute or key
    a setter call gives it (`setattr(obj, "md5", ...)`, pytest's `monkeypatch.setattr(Dataset,
    "md5", "...")` or `monkeypatch.setitem(table, "md5", "...")`), up to its statement."""
    child, parent = node, parents.get(node)
    while parent is not None and not isinstance(parent, ast.stmt):
        if isinstance(parent, ast.Dict):
            for key, value in zip(parent.keys, parent.values, strict=True):
                if value is child and isinstance(key, ast.Constant):
                    yield str(key.value)
        elif isinstance(parent, ast.Call) and _setter_name(parent, child):
            yield _setter_name(parent, child)
        child, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Assign | ast.AnnAssign):
        targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
        yield from (_terminal(t) for t in targets)


_SETTERS = frozenset({"setattr", "setitem"})


def _setter_name(call: ast.Call, value: ast.AST) -> str:
    """The name `call` sets to `value` when it is a setter (`setattr(obj, "name", value)`,
    `monkeypatch.setitem(table, "name", value)`): its second argument, a string; else ""."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if called not in _SETTERS or len(call.args) != 3 or call.args[2] is not value:
        return ""
    name = call.args[1]
    return name.value if isinstance(name, ast.Constant) and isinstance(name.value, str) else ""


def _named_constants(nodes: Iterator[ast.AST]) -> Iterator[tuple[str, object]]:
    """(name, constant) pairs on the line: assignments, dict entries, comparisons and keyword
    arguments."""
    for node in nodes:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                yield _terminal(target), node.value.value
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant):
                    yield str(key.value), value.value
        elif isinstance(node, ast.Compare) and len(node.comparators) == 1:
            right = node.comparators[0]
            if isinstance(right, ast.Constant):
                yield _terminal(node.left), right.value
        elif isinstance(node, ast.keyword) and node.arg and isinstance(node.value, ast.Constant):
            yield node.arg, node.value.value  # `dict(pad_token="[PAD]")`, `eos_token="<eod>"`


def _vocabulary_token(name: str, value: object) -> bool:
    """`name = value` names a tokenizer's token: the only word bandit matched is "token", and
    the name is a special token's or the value is no secret."""
    if _CREDENTIAL_WORDS.search(name):
        return False
    if _VOCABULARY_TOKEN.search(name) or not isinstance(value, str):
        return True
    text = value.strip()
    short = len(text) < _SHORTEST_SECRET
    return short or any(c.isspace() for c in text) or bool(_MARKUP.match(text))


_SUBPROCESS_CALLS = frozenset({"run", "call", "check_call", "check_output", "Popen"})


def _constant_shell_command(nodes: Iterator[ast.AST], _: dict[ast.AST, ast.AST]) -> str | None:
    for node in nodes:
        if not isinstance(node, ast.Call) or _terminal(node.func) not in _SUBPROCESS_CALLS:
            continue
        command = (
            node.args[0]
            if node.args
            else next((k.value for k in node.keywords if k.arg == "args"), None)
        )
        if isinstance(command, ast.Constant) and isinstance(command.value, str):
            return "the shell runs one constant command string: no outside value reaches it"
    return None


def _bare_except_after_interrupt(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    bare = [n for n in nodes if isinstance(n, ast.ExceptHandler) and n.type is None]
    if not bare:
        return None
    flagged = max(bare, key=lambda h: h.lineno)  # the one on the line, not one around it
    handlers: list[ast.ExceptHandler] = getattr(parents.get(flagged), "handlers", [])
    earlier = handlers[: next(i for i, h in enumerate(handlers) if h is flagged)]
    if any(_reraises_interrupt(h) for h in earlier):
        return (
            "an earlier handler of this try re-raises KeyboardInterrupt: the bare except "
            "catches the rest on purpose"
        )
    return None


def _reraises_interrupt(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught] if caught else []
    interrupt = any(_terminal(name) == "KeyboardInterrupt" for name in names)
    return interrupt and any(isinstance(stmt, ast.Raise) for stmt in handler.body)


_URL_CREDENTIALS = re.compile(r"://([^:/@\s]+):([^@/\s]+)@")
_PLACEHOLDER_USERS = frozenset({"user", "username", "usr", "login", "name", "id"})
_PLACEHOLDER_SECRETS = frozenset({"password", "pass", "passwd", "pwd", "secret", "token"})


def _digest_named_by_the_comment(line: str) -> str | None:
    """`self.version = '701eb743...'  # MD5 hash of the intended dataset file` (the LRGB
    dataset classes, Peptides and PCQM4Mv2-contact, and the code that copies them): the
    line's own comment says the hex literal is a content digest, and names no secret."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    comments = [t.string for t in tokens if t.type == tokenize.COMMENT]
    code = [t for t in tokens if t.type == tokenize.STRING and _HEX.search(t.string)]
    if not code or len(comments) != 1:
        return None
    comment = comments[0]
    if not _DIGEST_WORDS.search(comment) or _SECURITY_WORDS.search(comment):
        return None
    return "the line's comment calls the hex literal a content digest: public, not a credential"


def _placeholder_credentials(line: str) -> str | None:
    """`rtsp://username:password@host` in a usage comment: the words that name the fields,
    not values (detect-secrets' "Basic Auth Credentials" on yolov7's camera examples)."""
    pairs = _URL_CREDENTIALS.findall(line)
    if pairs and all(
        user.strip("<>{}[]").lower() in _PLACEHOLDER_USERS
        and secret.strip("<>{}[]").lower() in _PLACEHOLDER_SECRETS
        for user, secret in pairs
    ):
        return "the URL's credentials are the field names (`user:password`), a usage example"
    return None


_HUB_DOWNLOADS = frozenset(
    {"from_pretrained", "hf_hub_download", "snapshot_download", "load_dataset"}
)
_REPOSITORY_KEYWORDS = frozenset({"pretrained_model_name_or_path", "repo_id", "path"})


def _repository_chosen_elsewhere(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    """bandit B615 (a Hugging Face download without a pinned revision) where every download on
    the line takes its repository from outside the code: an attribute or entry of a
    configuration (`args.model_name_or_path`, `cfg["model"]`), a parameter of the enclosing
    function, or a path built by a call (`os.path.join(ckpt_dir, "best")`). Which repository,
    and at which revision, is the caller's or the command line's choice, often a local folder;
    a pin belongs where a hub name is written, so a literal name (or a name bound in the code)
    stays reported."""
    downloads = [
        n
        for n in nodes
        if isinstance(n, ast.Call)
        and (n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", ""))
        in _HUB_DOWNLOADS
    ]
    if not downloads:
        return None
    chosen: list[str] = []
    for call in downloads:
        repository = call.args[0] if call.args else None
        if repository is None:
            repository = next(
                (k.value for k in call.keywords if k.arg in _REPOSITORY_KEYWORDS), None
            )
        if repository is None or isinstance(repository, ast.Starred):
            return None
        if _packaged_builder(call, repository):
            chosen.append(ast.unparse(repository))
            continue
        if not _outside_value(repository, _enclosing_function(call, parents), parents, 0):
            return None  # a literal, or a name bound to one: a hub name written here
        chosen.append(ast.unparse(repository))
    if all(_packaged_builder(call, call.args[0] if call.args else None) for call in downloads):
        return (
            f"`load_dataset({chosen[0]}, ...)` runs a builder packaged with `datasets` on the "
            "files it is given: no repository is downloaded, so there is no revision to pin"
        )
    return (
        f"the repository comes from outside this code (`{chosen[0]}`: a parameter, a "
        "command-line or configuration value, often a local folder); pinning a revision "
        "belongs where a hub name is written"
    )


# The builders `datasets` ships for local files: `load_dataset("parquet", data_files=...)`.
_PACKAGED_BUILDERS = frozenset(
    {
        "arrow",
        "audiofolder",
        "csv",
        "generator",
        "imagefolder",
        "json",
        "pandas",
        "parquet",
        "sql",
        "text",
        "videofolder",
        "webdataset",
        "xml",
    }
)
_MAX_ALIASES = 2


def _packaged_builder(call: ast.Call, repository: ast.expr | None) -> bool:
    """`load_dataset("parquet", data_files=path)`: a builder of `datasets` itself, given files."""
    return (
        _terminal(call.func) == "load_dataset"
        and isinstance(repository, ast.Constant)
        and repository.value in _PACKAGED_BUILDERS
    )


def _outside_value(
    value: ast.expr,
    fn: ast.AST | None,
    parents: dict[ast.AST, ast.AST],
    depth: int,
) -> bool:
    """`value` comes from outside the code: an attribute or entry of a configuration, a path
    built by a call, a parameter of the enclosing function or of a function around it (a
    nested helper reading its loader's `file_or_url_or_id`), either side of `a or b` /
    `a if c else b` when both are, or a local name every binding of which in its function
    is such a value (`text_model = args.text_model`, `name = config.hf_name`, `with
    self._handle_download(uri) as repo_id:`)."""
    if isinstance(value, ast.Attribute | ast.Subscript | ast.Call):
        return True
    if isinstance(value, ast.BoolOp):
        return all(_outside_value(v, fn, parents, depth) for v in value.values)
    if isinstance(value, ast.IfExp):
        return _outside_value(value.body, fn, parents, depth) and _outside_value(
            value.orelse, fn, parents, depth
        )
    if not isinstance(value, ast.Name):
        return False
    scope: ast.AST | None = fn
    while isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        arguments = scope.args
        parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        if any(a.arg == value.id for a in parameters):
            return True
        if _binds(scope, value.id):
            break  # a local of this function, not its outer one's parameter
        scope = _enclosing_function(scope, parents)
    if scope is None:  # a script's top level: `text_model = args.text_model` under `__main__`
        scope = _module_of(value, parents)
    if scope is None or depth >= _MAX_ALIASES:
        return False
    bound = _bindings(scope, value.id)
    return bool(bound) and all(
        v is not None and _outside_value(v, scope, parents, depth + 1) for v in bound
    )


def _module_of(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> ast.Module | None:
    while node in parents:
        node = parents[node]
    return node if isinstance(node, ast.Module) else None


def _binds(fn: ast.AST, name: str) -> bool:
    """`name` is assigned anywhere in `fn` (its own body or nested blocks)."""
    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)
        for node in ast.walk(fn)
    )


def _bindings(fn: ast.AST, name: str) -> list[ast.expr | None]:
    """What `name` is bound to in `fn`: assigned values and `with` items; None for any other
    binding (a loop target, an unpacking, `except ... as`), which says nothing."""
    found: list[ast.expr | None] = []
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    found.append(node.value)
                elif any(isinstance(t, ast.Name) and t.id == name for t in ast.walk(target)):
                    found.append(None)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
            target = node.target
            if isinstance(target, ast.Name) and target.id == name:
                found.append(node.value if isinstance(node, ast.AnnAssign) else None)
        elif isinstance(node, ast.withitem):
            var = node.optional_vars
            if isinstance(var, ast.Name) and var.id == name:
                found.append(node.context_expr)
        elif isinstance(node, ast.For | ast.comprehension) and any(
            isinstance(t, ast.Name) and t.id == name for t in ast.walk(node.target)
        ):
            found.append(None)
    return found


def _enclosing_function(
    node: ast.AST, parents: dict[ast.AST, ast.AST]
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    scope: ast.AST | None = parents.get(node)
    while scope is not None and not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        scope = parents.get(scope)
    return scope


def _bound_in(fn: ast.AST, name: str) -> list[ast.expr]:
    """The values assigned to `name` in `fn`'s body."""
    return [
        node.value
        for node in ast.walk(fn)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    ]


def _tensor_bytes(expr: ast.AST) -> bool:
    """`buffer.cpu().numpy().tobytes()`, sliced or not."""
    while isinstance(expr, ast.Subscript):
        expr = expr.value
    return isinstance(expr, ast.Call) and _terminal(expr.func) == "tobytes"


def _gathered_objects(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
    """`pickle.loads(buffer.cpu().numpy().tobytes())` in a function that pickles its own
    object into that buffer (`pickle.dumps(obj)`) for a broadcast or an `all_gather` of
    arbitrary objects: each process unpickles what another process of the job pickled
    (torchdoctor's `pickle-model-artifacts` reads it so, bandit B301 does not)."""
    for call in _calls_named(nodes, "loads"):
        fn = _enclosing_function(call, parents)
        if fn is None or not call.args:
            continue
        data = call.args[0]
        values = _bound_in(fn, data.id) if isinstance(data, ast.Name) else [data]
        if not values or not all(_tensor_bytes(v) for v in values):
            continue
        if _calls_named(ast.walk(fn), "dumps"):
            return (
                "the bytes unpickled are a tensor the processes of this job exchanged, filled "
                "from an object one of them pickled (`pickle.dumps`) in this function: no "
                "file or outside data is read"
            )
    return None


def _pickled_copy(nodes: Iterator[ast.AST], _: dict[ast.AST, ast.AST]) -> str | None:
    """`loads(dumps(self.fragment))`: every unpickling on the line reads bytes pickled by the
    same expression a moment before (a deep copy through pickle), never a file or a peer."""
    loads = _calls_named(nodes, "loads")
    if loads and all(
        len(call.args) == 1
        and isinstance(call.args[0], ast.Call)
        and _terminal(call.args[0].func) == "dumps"
        for call in loads
    ):
        return "the bytes unpickled are pickled on the same line (a deep copy): nothing outside"
    return None


def _keyword_in_unpacked(callee: str, key: str) -> _Check:
    """`callee(..., **kwargs)` where the enclosing function fills `kwargs` with `key`:
    k-diffusion's `kwargs.setdefault("use_reentrant", True)` before `checkpoint(fn, *args,
    **kwargs)`, whisper's `kwargs = {"weights_only": True} if ... else {}` before
    `torch.load(fp, map_location=device, **kwargs)`. The peer cannot see into the dict."""

    def check(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
        for call in _calls_named(nodes, callee):
            unpacked = [k.value for k in call.keywords if k.arg is None]
            fn = _enclosing_function(call, parents)
            if not unpacked or fn is None:
                continue
            names = {ast.unparse(value) for value in unpacked}
            if any(_sets_key(node, names, key) for node in ast.walk(fn)):
                return (
                    f"the {callee} call unpacks a dict that this function fills with {key}, "
                    "which the peer cannot see"
                )
        return None

    return check


def _sets_key(node: ast.AST, names: set[str], key: str) -> bool:
    """`kwargs.setdefault(key, ...)`, `kwargs[key] = ...`, `kwargs.update(key=...)` or
    `kwargs = {key: ...}` / `dict(key=...)` on one of `names`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if ast.unparse(node.func.value) not in names:
            return False
        if node.func.attr == "setdefault" and node.args:
            first = node.args[0]
            return isinstance(first, ast.Constant) and first.value == key
        return node.func.attr == "update" and any(k.arg == key for k in node.keywords)
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if (
                isinstance(target, ast.Subscript)
                and ast.unparse(target.value) in names
                and isinstance(target.slice, ast.Constant)
                and target.slice.value == key
            ):
                return True
            if isinstance(target, ast.Name) and target.id in names:
                value = node.value
                if isinstance(value, ast.Dict) and any(
                    isinstance(k, ast.Constant) and k.value == key for k in value.keys
                ):
                    return True
                if isinstance(value, ast.Call) and any(k.arg == key for k in value.keywords):
                    return True
                if isinstance(value, ast.IfExp) and any(
                    isinstance(branch, ast.Dict)
                    and any(isinstance(k, ast.Constant) and k.value == key for k in branch.keys)
                    for branch in (value.body, value.orelse)
                ):
                    return True  # `{"weights_only": True} if new_torch else {}`
    return False


_PLACEHOLDER_VALUES = frozenset(
    {"", "default", "none", "null", "auto", "disabled", "placeholder", "changeme", "xxx",
     "empty", "dummy"}
)  # fmt: skip
_MASKED = re.compile(r"^[A-Za-z]{0,4}[-_]?(\*{3,}|x{6,}|X{6,})$")
"""A key shown masked in documentation (`"sk-******"`, `"xxxxxxxx"`)."""


def _placeholder_text(text: str) -> bool:
    return (
        text.lower() in _PLACEHOLDER_VALUES
        or bool(_MARKUP.match(text))
        or bool(_TEMPLATE.match(text))
        or bool(_MASKED.match(text))
    )


_QUOTED = re.compile(r"""(["'])(.*?)\1""")


def _commented_placeholder(line: str) -> str | None:
    """detect-secrets' "Secret Keyword" on a commented-out configuration line whose values are
    placeholders or masked keys (`#     "api_key": "sk-******",`, an example config in a
    comment): nothing runs, nothing real is shown."""
    text = line.strip()
    if not text.startswith("#"):
        return None
    values = [m.group(2).strip() for m in _QUOTED.finditer(text)]
    keyish = [v for v in values if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v)]
    if keyish and all(_placeholder_text(v) for v in keyish):
        return "a commented-out example whose key is a placeholder or masked, not a credential"
    return None


def _placeholder_keyword_value(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    """detect-secrets' "Secret Keyword" where every string on the line is a placeholder word
    (`client_keys='default'`, BasicSR's LMDB client, a key *name* whose default is
    'default'), or markup (`<API_KEY>`, `${TOKEN}`): nothing a secret would be. The key a
    value is stored under (`os.environ["OPENAI_API_KEY"] = "empty"`) is a name, not a value."""
    strings = [
        node.value.strip()
        for node in nodes
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and not _a_key(node, parents.get(node))
    ]
    if strings and all(_placeholder_text(text) for text in strings):
        return "the keyword's value is a placeholder word or markup, not a credential"
    return None


_TEMPLATE = re.compile(r"^\$?\{[A-Za-z_][A-Za-z0-9_]*\}$")


def _a_key(node: ast.AST, parent: ast.AST | None) -> bool:
    """`node` is the key of a subscript (`os.environ["KEY"]`) or of a dict entry."""
    if isinstance(parent, ast.Subscript):
        return parent.slice is node
    return isinstance(parent, ast.Dict) and any(k is node for k in parent.keys)


def _first_reason(*checks: _Check) -> _Check:
    def check(nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]) -> str | None:
        found = list(nodes)
        return next((why for c in checks if (why := c(iter(found), parents)) is not None), None)

    return check


# A load the peer reads as unsafe that is weights-only all the same: inside
# `safe_globals`, or unpacking a dict the function fills with `weights_only`.
_load_weights_only_elsewhere = _first_reason(
    _load_inside_safe_globals, _keyword_in_unpacked("load", "weights_only")
)

_LINE_CHECKS: dict[tuple[str, str], Callable[[str], str | None]] = {
    ("detect-secrets", "Basic Auth Credentials"): _placeholder_credentials,
    ("detect-secrets", "Hex High Entropy String"): _digest_named_by_the_comment,
    ("detect-secrets", "Secret Keyword"): _commented_placeholder,
}
_UNSAFE_LOAD = (("bandit", "B614"), ("torchfix", "TOR102"))
_PATH_CHECKS: dict[tuple[str, str], Callable[[str], str | None]] = {
    ("torchfix", "TOR401"): _loader_in_a_test,
    **{key: _load_in_a_test for key in _UNSAFE_LOAD},
    ("bandit", "B301"): _unpickle_in_a_test,
}
_CHECKS: dict[tuple[str, str], _Check] = {
    ("torchfix", "TOR401"): _first_reason(
        _loader_with_star_kwargs, _loader_over_in_memory_tensors, _loader_only_counted
    ),
    ("bandit", "B105"): _tokenizer_token,
    ("bandit", "B106"): _tokenizer_token,
    ("bandit", "B107"): _tokenizer_token_defaults,
    ("bandit", "B602"): _constant_shell_command,
    ("ruff", "E722"): _bare_except_after_interrupt,
    ("bandit", "B311"): _random_not_for_security,
    ("detect-secrets", "Hex High Entropy String"): _digest_or_symbol_set,
    ("detect-secrets", "Base64 High Entropy String"): _first_reason(
        _symbol_set, _download_table_ids, _model_zoo_entries
    ),
    ("bandit", "B614"): _load_weights_only_elsewhere,
    ("torchfix", "TOR102"): _load_weights_only_elsewhere,
    ("bandit", "B301"): _first_reason(_gathered_objects, _pickled_copy),
    ("detect-secrets", "Secret Keyword"): _placeholder_keyword_value,
    ("torchfix", "TOR003"): _keyword_in_unpacked("checkpoint", "use_reentrant"),
    ("bandit", "B615"): _repository_chosen_elsewhere,
}
