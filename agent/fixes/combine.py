"""Verified fixes applied together: in phase order, each added only if the combination still
applies cleanly and still passes verification; a conflict or regression drops that fix."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agent.fixes.diffs import PatchError, apply_to_text, parse, unified_diff
from agent.fixes.models import FixKind, Patch, SmokeRun
from agent.fixes.verify import Claim, FixSpec, Verifier
from agent.models import Finding, Verification


class Combination(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kept: list[str] = Field(default_factory=list)
    dropped: dict[str, str] = Field(default_factory=dict)
    diff: str = ""


def merge_texts(root: Path, diffs: list[str]) -> dict[str, str]:
    """Apply diffs one after another onto the workspace's texts (exact content, shifted lines
    allowed); raises PatchError on a conflict. Returns path -> new text for touched files."""
    texts: dict[str, str] = {}
    for diff in diffs:
        for patch in parse(diff):
            current = texts.get(patch.path)
            if current is None:
                current = (root / patch.path).read_text(encoding="utf-8")
            texts[patch.path] = apply_to_text(current, patch, offsets=True)
    return texts


def combined_diff(root: Path, texts: dict[str, str]) -> str:
    return "".join(
        unified_diff(path, (root / path).read_text(encoding="utf-8"), text)
        for path, text in sorted(texts.items())
    )


def combine(
    verifier: Verifier, fixed: list[tuple[Finding, FixSpec]]
) -> tuple[Combination, dict[str, Verification]]:
    """Add verified fixes one at a time (phase order); re-verify each growing combination."""
    order = sorted(fixed, key=lambda item: (item[0].phase, -item[0].severity.rank, item[0].id))
    result = Combination()
    notes: dict[str, Verification] = {}
    kept: list[tuple[Finding, FixSpec]] = []
    for finding, spec in order:
        assert finding.fix is not None
        candidate = [*kept, (finding, spec)]
        try:
            texts = merge_texts(verifier.root, [f.fix.diff for f, _ in candidate if f.fix])
        except PatchError as err:
            reason = f"conflicts with the fixes before it: {err}"
            result.dropped[finding.id] = reason
            notes[finding.id] = Verification(step="combined", ok=False, detail=reason)
            continue
        diff = combined_diff(verifier.root, texts)
        if len(candidate) > 1:
            checks = verifier.verify(
                Patch(
                    finding_id="+".join(f.id for f, _ in candidate),
                    rule="+".join(f.rule for f, _ in candidate),
                    diff=diff,
                    files=sorted(texts),
                ),
                Claim(
                    rules=frozenset(f.rule for f, _ in candidate),
                    severity=min((f.severity for f, _ in candidate), key=lambda s: s.rank),
                ),
                _joint_spec([s for _, s in candidate]),
            )
            failed = next((c for c in checks if not c.ok), None)
            if failed is not None:
                reason = f"regression when combined ({failed.step}): {failed.detail}"
                result.dropped[finding.id] = reason
                notes[finding.id] = Verification(step="combined", ok=False, detail=reason)
                continue
        kept = candidate
        result.kept.append(finding.id)
        result.diff = diff
        notes[finding.id] = Verification(
            step="combined",
            ok=True,
            detail=f"verified together with {len(candidate) - 1} earlier fix(es)",
        )
    return result, notes


def _joint_spec(specs: list[FixSpec]) -> FixSpec:
    """The combination is a correctness change if any part is; its tolerance is the loosest
    part's (none when a correctness part changes results on purpose). Speed is not re-measured."""
    correctness = [s for s in specs if s.kind is FixKind.CORRECTNESS]
    rtols = [s.rtol for s in specs]
    rtol = None if any(r is None for r in rtols) else max(r for r in rtols if r is not None)
    if not correctness:
        return FixSpec(kind=FixKind.PRECISION, rtol=rtol, symptom=specs[0].symptom)

    def every_symptom(before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        results = [s.symptom(before, after) for s in correctness]
        return all(ok for ok, _ in results), "; ".join(text for _, text in results)

    return FixSpec(kind=FixKind.CORRECTNESS, rtol=rtol, symptom=every_symptom)
