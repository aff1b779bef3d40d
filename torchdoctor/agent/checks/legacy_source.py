"""Source written for Python 2 or before Python 3.7, read as its Python 3 form, line for line.

Research code of the PyTorch 0.3/0.4 years is often Python 2 (`print loss`, `except
IOError, e:`) or passes `x.cuda(async=True)`, a keyword Python 3.7 took: Python 3's parser
rejects the whole module, so every other check saw nothing of a training loop that is
otherwise plain PyTorch; so is a module that indents some lines with tabs among lines of
spaces, as Python 2 allowed. The engine still reports the syntax error; it then reads the module
through this rewrite, which only touches what Python 3 rejects and never moves a line, so
findings point at the user's lines.
"""

from __future__ import annotations

import io
import tokenize
from dataclasses import dataclass

_STARTS = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT})
_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")


@dataclass(frozen=True)
class _Edit:
    start: tuple[int, int]
    end: tuple[int, int]
    text: str


def as_python3(source: str) -> str | None:
    """`source` with its `print` statements, `except E, e:` and `raise E, message` written
    the Python 3 way (`print(x, file=f)`, `except E as e:`, `raise E(message)`), the
    `async=` keyword argument as `non_blocking=` and indentation mixing tabs and spaces
    expanded as Python 2 read it, every line where it was; None when nothing was rewritten
    or the source does not tokenize."""
    indented = _python2_indentation(source)
    if indented is not None:
        source = indented
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type != tokenize.COMMENT
        ]
    except (tokenize.TokenError, SyntaxError):
        return None
    edits: list[_Edit] = []
    for i, token in enumerate(tokens):
        if token.type != tokenize.NAME:
            continue
        if token.string == "async" and tokens[i + 1].string == "=" and _depth(tokens, i) > 0:
            edits.append(_Edit(token.start, token.end, "non_blocking"))  # PyTorch 0.3's name
            continue
        if not _statement_start(tokens, i):
            continue
        end = _statement_end(tokens, i + 1)
        if token.string == "print":
            edits += _print(tokens, i, end, source)
        elif token.string == "except":
            edits += _except(tokens, i, end)
        elif token.string == "raise":
            edits += _raise(tokens, i, end)
    return _apply(source, edits) if edits else indented


def _python2_indentation(source: str) -> str | None:
    """Indentation that mixes tabs and spaces, each tab taken to the next multiple of eight
    columns as Python 2 did (Python 3 raises TabError); the lines of a multi-line string are
    left as they are. None when the module does not mix them."""
    lines = source.splitlines(keepends=True)
    indents = [line[: len(line) - len(line.lstrip(" \t"))] for line in lines]
    if not any("\t" in i for i in indents) or not any(" " in i for i in indents):
        return None
    in_string = _string_rows(source)
    for n, indent in enumerate(indents):
        if "\t" in indent and n + 1 not in in_string:
            lines[n] = indent.expandtabs(8) + lines[n][len(indent) :]
    return "".join(lines)


def _string_rows(source: str) -> set[int]:
    """The rows a multi-line string continues onto (none when the source does not tokenize)."""
    rows: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.STRING and token.end[0] > token.start[0]:
                rows.update(range(token.start[0] + 1, token.end[0] + 1))
    except (tokenize.TokenError, SyntaxError):
        pass
    return rows


def _statement_start(tokens: list[tokenize.TokenInfo], i: int) -> bool:
    """Token `i` opens a statement: first of its line, or after `;` or a one-line header's
    `:` outside brackets (`if verbose: print loss`)."""
    if i == 0:
        return True
    before = tokens[i - 1]
    if before.type == tokenize.NL:
        return _depth(tokens, i) == 0
    if before.type in _STARTS:
        return True
    return before.type == tokenize.OP and before.string in (";", ":") and _depth(tokens, i) == 0


def _depth(tokens: list[tokenize.TokenInfo], i: int) -> int:
    depth = 0
    for token in reversed(tokens[:i]):
        if token.type == tokenize.NEWLINE:
            break
        if token.type == tokenize.OP and token.string in _OPEN:
            depth -= 1
        elif token.type == tokenize.OP and token.string in _CLOSE:
            depth += 1
    return max(0, -depth)


def _statement_end(tokens: list[tokenize.TokenInfo], i: int) -> int:
    """Index of the token that ends the statement begun before `i`: its NEWLINE, or a `;`
    outside brackets."""
    depth = 0
    for j in range(i, len(tokens)):
        token = tokens[j]
        if token.type == tokenize.OP and token.string in _OPEN:
            depth += 1
        elif token.type == tokenize.OP and token.string in _CLOSE:
            depth -= 1
        elif depth <= 0 and (
            token.type in (tokenize.NEWLINE, tokenize.ENDMARKER)
            or (token.type == tokenize.OP and token.string == ";")
        ):
            return j
    return len(tokens) - 1


def _commas(tokens: list[tokenize.TokenInfo], start: int, end: int) -> list[int]:
    """Indices of the commas outside brackets between `start` and `end`."""
    depth, found = 0, []
    for j in range(start, end):
        token = tokens[j]
        if token.type != tokenize.OP:
            continue
        if token.string in _OPEN:
            depth += 1
        elif token.string in _CLOSE:
            depth -= 1
        elif token.string == "," and depth == 0:
            found.append(j)
    return found


def _print(tokens: list[tokenize.TokenInfo], i: int, end: int, source: str) -> list[_Edit]:
    first = tokens[i + 1]
    if first.type == tokenize.OP and first.string in ("(", "=", ".", ")", ","):
        return []  # already a call (`print("x")`), or a name (`print = logger.info`)
    head, stop = tokens[i], tokens[end]
    if i + 1 == end:  # a bare `print`
        return [_Edit(head.end, head.end, "()")]
    commas = _commas(tokens, i + 1, end)
    keywords = []
    args_from = i + 1
    edits = []
    if first.type == tokenize.OP and first.string == ">>":
        if not commas:
            target = _text(source, tokens[i + 2], tokens[end - 1])
            return [_Edit(head.end, stop.start, f"(file={target})")]
        keywords.append(f"file={_text(source, tokens[i + 2], tokens[commas[0] - 1])}")
        args_from = commas[0] + 1
        commas = commas[1:]
    trailing = bool(commas) and commas[-1] == end - 1
    args_to = end - 1 if trailing else end
    if trailing:
        keywords.append('end=" "')
    if tokens[args_from].start[0] != head.end[0] or stop.start[0] != tokens[end - 1].end[0]:
        return []  # a backslash continuation or a file on its own line: a rewrite moves lines
    if args_from < args_to:
        # keep the arguments where they are (they may span lines): only their edges change
        edits.append(_Edit(head.end, tokens[args_from].start, "("))
        tail = ", ".join(keywords)
        edits.append(_Edit(tokens[args_to - 1].end, stop.start, f", {tail})" if tail else ")"))
    else:
        edits.append(_Edit(head.end, stop.start, f"({', '.join(keywords)})"))
    return edits


def _except(tokens: list[tokenize.TokenInfo], i: int, end: int) -> list[_Edit]:
    """`except E, e:` -> `except E as e:` (the `:` ends the clause header)."""
    colon = next(
        (j for j in range(i + 1, end) if tokens[j].string == ":" and _depth(tokens, j) == 0),
        None,
    )
    if colon is None:
        return []
    commas = _commas(tokens, i + 1, colon)
    if len(commas) != 1 or colon - commas[0] != 2 or tokens[colon - 1].type != tokenize.NAME:
        return []
    comma = tokens[commas[0]]
    return [_Edit(comma.start, comma.end, " as")]


def _raise(tokens: list[tokenize.TokenInfo], i: int, end: int) -> list[_Edit]:
    """`raise E, message` -> `raise E(message)`."""
    commas = _commas(tokens, i + 1, end)
    if len(commas) != 1 or commas[0] == end - 1:
        return []
    comma = tokens[commas[0]]
    return [
        _Edit(comma.start, tokens[commas[0] + 1].start, "("),
        _Edit(tokens[end - 1].end, tokens[end - 1].end, ")"),
    ]


def _text(source: str, first: tokenize.TokenInfo, last: tokenize.TokenInfo) -> str:
    """The source from `first` to `last`, both included (an expression on one line)."""
    if first.start[0] != last.end[0]:
        return " ".join(source.splitlines()[first.start[0] - 1 : last.end[0]]).strip()
    return first.line[first.start[1] : last.end[1]]


def _apply(source: str, edits: list[_Edit]) -> str:
    """The edits made from the last to the first, on text addressed by (row, column)."""
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(point: tuple[int, int]) -> int:
        row, col = point
        return starts[row - 1] + col if row - 1 < len(starts) else len(source)

    text = source
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: offset(edit.start)] + edit.text + text[offset(edit.end) :]
    return text
