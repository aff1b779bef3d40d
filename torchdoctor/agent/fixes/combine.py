"""Verified fixes applied together: in phase order, each added only if the combination still
applies cleanly and still passes verification; a conflict or regression drops that fix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checks.base import RawFinding, numbered_excerpt
from torchdoctor.agent.fixes.codemods import codemod_for, fix_order
from torchdoctor.agent.fixes.codemods.base import Codemod
from torchdoctor.agent.fixes.diffs import (
    PatchError,
    apply_to_text,
    line_opcodes,
    map_line,
    parse,
    unified_diff,
)
from torchdoctor.agent.fixes.formatting import format_changed_lines
from torchdoctor.agent.fixes.models import FixKind, FixTarget, Patch, SmokeRun
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.models import Finding, Verification
from torchdoctor.agent.safefs import GuardedTree, display_name


class Combination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kept: list[str] = Field(default_factory=list)
    dropped: dict[str, str] = Field(default_factory=dict)
    diff: str = ""


def merge_fixes(root: Path, findings: list[Finding]) -> dict[str, str]:
    """The files under `root` with the findings' fixes applied one after another, in order.

    Each fix must still apply exactly to the file it was verified against (else the file
    changed since). A codemod fix is re-run on the text the earlier fixes left, at its
    finding's lines mapped through those edits, so neighbouring fixes do not collide on
    diff context; an LLM patch is applied with shifted lines allowed. Raises PatchError
    (naming the finding) on a conflict. Returns path -> new text for the touched files.
    """
    originals: dict[str, str] = {}
    texts: dict[str, str] = {}
    for finding in findings:
        if finding.fix is None:
            continue
        patches = parse(finding.fix.diff)
        for patch in patches:
            if patch.path not in originals:
                originals[patch.path] = _read(root, patch.path)
            apply_to_text(originals[patch.path], patch)
        codemod = codemod_for(finding.rule) if finding.fix.origin == "codemod" else None
        if codemod is not None and [p.path for p in patches] == [finding.file]:
            texts[finding.file] = replay_codemod(
                root, codemod, finding, originals[finding.file], texts
            )
        else:
            for patch in patches:
                current = texts.get(patch.path, originals[patch.path])
                texts[patch.path] = apply_to_text(current, patch, offsets=True)
    return texts


def _read(root: Path, relative: str) -> str:
    """A patched file's text, read through the guarded layer: a patch naming a path outside
    the tree, or a link, is a conflict, never a read of a host file."""
    try:
        return GuardedTree(root).read_text(relative)
    except (OSError, UnicodeDecodeError) as err:
        raise PatchError(f"{display_name(relative)}: cannot be patched ({err})") from err


def replay_codemod(
    root: Path, codemod: Codemod, finding: Finding, original: str, texts: dict[str, str]
) -> str:
    """The codemod re-run on the text earlier fixes left (`texts`, else `original`), at its
    finding's lines mapped through those edits (its changed lines formatted as the project
    under `root` formats them)."""
    current = texts.get(finding.file, original)
    target = retarget(original, current, FixTarget.from_finding(finding))
    if target is None:
        raise PatchError(f"{finding.id}: an earlier fix removed the flagged lines")
    fixed = codemod.transform(current, target)
    if fixed is None:
        raise PatchError(f"{finding.id}: the fix no longer applies after the earlier fixes")
    return format_changed_lines(root, current, fixed)


def retarget(original: str, current: str, target: FixTarget) -> FixTarget | None:
    """`target`'s lines of `original` in `current`, the text earlier fixes left. Flagged lines
    an earlier fix rewrote (the same DataLoader call given `num_workers`, then `pin_memory`)
    become the rewritten lines, where the codemod looks for its pattern again; None when an
    edit removed them."""
    spans = line_opcodes(original, current)
    line = _mapped(spans, target.line, end=False)
    end_line = _mapped(spans, target.end_line, end=True)
    if line is None or end_line is None or end_line < line:
        return None
    data = _data_on(spans, target.data)
    if data is None:
        return None
    return target.model_copy(update={"line": line, "end_line": end_line, "data": data})


def _data_on(
    spans: Sequence[tuple[str, int, int, int, int]], data: dict[str, Any]
) -> dict[str, Any] | None:
    """The finding's data with the other lines it names (`set_line`, `softmax_lines`: the
    codemod looks there) mapped too: a vocabulary fix replayed after a seed fix added lines
    above looked for its set at the old line, and was dropped as a conflict (a seq2seq
    tutorial). None when an earlier fix removed one of them."""
    mapped = dict(data)
    for key, value in data.items():
        if key.endswith("_line") and isinstance(value, int) and not isinstance(value, bool):
            line = _mapped(spans, value, end=False)
            if line is None:
                return None
            mapped[key] = line
        elif key.endswith("_lines") and isinstance(value, list):
            lines = [_mapped(spans, v, end=False) if isinstance(v, int) else v for v in value]
            if None in lines:
                return None
            mapped[key] = lines
    return mapped


def _mapped(spans: Sequence[tuple[str, int, int, int, int]], line: int, *, end: bool) -> int | None:
    for tag, i1, i2, j1, j2 in spans:
        if i1 <= line - 1 < i2:
            if tag == "equal":
                return j1 + (line - 1 - i1) + 1
            if tag == "replace":
                return j2 if end else j1 + 1
            return None
    return None


# "line 30", "lines 12, 14": the lines a rule's message names beside the reported one.
_LINE_REFS = re.compile(r"\b(lines? )(\d+(?:, \d+)*)")
_EXCERPT_ROW = re.compile(r"^([> ]) *(\d+) \| ")


def finding_on_original(raw: RawFinding, copy: str, original: str) -> RawFinding | None:
    """A finding made on a working copy (the text with earlier phases' fixes) as it reads on
    the user's file: its lines, the numbered excerpt and the lines its message names are those
    of `original`; None when the reported line was written by a fix."""
    line = map_line(copy, original, raw.line)
    if line is None:
        return None
    end = map_line(copy, original, raw.end_line) or line
    lines = original.splitlines()

    def mapped(match: re.Match[str]) -> str:
        numbers = [int(n) for n in match.group(2).split(", ")]
        on_original = [map_line(copy, original, n) for n in numbers]
        if any(n is None for n in on_original):
            return match.group(0)
        return match.group(1) + ", ".join(str(n) for n in on_original)

    return raw.model_copy(
        update={
            "line": line,
            "end_line": max(end, line),
            "message": _LINE_REFS.sub(mapped, raw.message),
            "excerpt": _excerpt_on_original(raw, copy, original, lines, line, max(end, line)),
        }
    )


def _excerpt_on_original(
    raw: RawFinding, copy: str, original: str, lines: list[str], line: int, end: int
) -> str:
    """The excerpt's marked lines and context, numbered and read from the original (context a
    fix inserted is not shown as the user's code)."""
    if not raw.excerpt:
        return raw.excerpt
    rows = [m for m in map(_EXCERPT_ROW.match, raw.excerpt.splitlines()) if m]
    marked = [int(m.group(2)) for m in rows if m.group(1) == ">"]
    if marked:
        first = map_line(copy, original, marked[0])
        last = map_line(copy, original, marked[-1])
        if first is not None and last is not None and first <= last:
            context = max(marked[0] - int(rows[0].group(2)), int(rows[-1].group(2)) - marked[-1])
            return numbered_excerpt(lines, first, last, context)
    return numbered_excerpt(lines, line, min(end, line + 6))


def combined_diff(root: Path, texts: dict[str, str]) -> str:
    return "".join(
        unified_diff(path, _read(root, path), text) for path, text in sorted(texts.items())
    )


def combine(
    verifier: Verifier, fixed: list[tuple[Finding, FixSpec]]
) -> tuple[Combination, dict[str, Verification]]:
    """Merge the verified fixes in phase order (a fix that conflicts with those before it is
    dropped), verify the combination, and while it regresses drop the last fix and retry."""
    order = sorted(fixed, key=lambda item: fix_order(item[0]))
    result = Combination()
    notes: dict[str, Verification] = {}

    def drop(finding: Finding, reason: str) -> None:
        result.dropped[finding.id] = reason
        notes[finding.id] = Verification(step="combined", ok=False, detail=reason)

    kept: list[tuple[Finding, FixSpec]] = []
    for finding, spec in order:
        try:
            merge_fixes(verifier.root, [f for f, _ in [*kept, (finding, spec)]])
        except PatchError as err:
            drop(finding, f"conflicts with the fixes before it: {err}")
            continue
        kept.append((finding, spec))
    while kept:
        texts = merge_fixes(verifier.root, [f for f, _ in kept])
        diff = combined_diff(verifier.root, texts)
        failed = None
        if len(kept) > 1:
            checks = verifier.verify(
                Patch(
                    finding_id="+".join(f.id for f, _ in kept),
                    rule="+".join(f.rule for f, _ in kept),
                    diff=diff,
                    files=sorted(texts),
                ),
                # each fix alone already introduced nothing at or above its own severity; the
                # combination is held to its most severe fix, so a low-severity fix does not
                # lower the bar for what the others' edits bring (a LOW finding that a HIGH
                # fix's edit raises is that fix's accepted trade, not a regression of the set)
                Claim(
                    rules=frozenset(f.rule for f, _ in kept),
                    severity=max((f.severity for f, _ in kept), key=lambda s: s.rank),
                ),
                _joint_spec([s for _, s in kept]),
            )
            failed = next((c for c in checks if not c.ok), None)
        if failed is None:
            result.kept = [f.id for f, _ in kept]
            result.diff = diff
            for finding, _ in kept:
                notes[finding.id] = Verification(
                    step="combined",
                    ok=True,
                    detail=f"verified together with {len(kept) - 1} other fix(es)",
                )
            break
        last, _ = kept.pop()
        drop(last, f"regression when combined ({failed.step}): {failed.detail}")
    return result, notes


def _joint_spec(specs: list[FixSpec]) -> FixSpec:
    """The combination is a correctness change if any part is; its tolerance is the loosest
    part's (none when a correctness part changes results on purpose); it repeats without the
    harness's seed, or under another hash seed, when a part is judged that way (a seeding fix's
    symptom compares those repeats: without them, no-torch-seed failed every combination).
    Speed is not re-measured."""
    correctness = [s for s in specs if s.kind is FixKind.CORRECTNESS]
    rtols = [s.rtol for s in specs]
    rtol = None if any(r is None for r in rtols) else max(r for r in rtols if r is not None)
    memory = max(s.extra_memory_mb for s in specs)
    repeat = any(s.unseeded_repeat for s in specs)
    other_hash_seed = any(s.hash_seed_repeat for s in specs)
    if not correctness:
        return FixSpec(
            kind=FixKind.PRECISION,
            rtol=rtol,
            symptom=specs[0].symptom,
            unseeded_repeat=repeat,
            hash_seed_repeat=other_hash_seed,
            extra_memory_mb=memory,
        )

    def every_symptom(before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        results = [s.symptom(before, after) for s in correctness]
        return all(ok for ok, _ in results), "; ".join(text for _, text in results)

    return FixSpec(
        kind=FixKind.CORRECTNESS,
        rtol=rtol,
        symptom=every_symptom,
        unseeded_repeat=repeat,
        hash_seed_repeat=other_hash_seed,
        extra_memory_mb=memory,
    )
