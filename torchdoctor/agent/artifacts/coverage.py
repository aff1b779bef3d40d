"""What the artifacts say about the checklist: evidence for the items they speak to, and the
items they settle once the user accepted them."""

from __future__ import annotations

from torchdoctor import __version__
from torchdoctor.agent.artifacts.models import Artifact
from torchdoctor.agent.checklist import ITEMS_BY_ID
from torchdoctor.agent.models import CoverageEntry, Evidence, Verdict

SOURCE = "torchdoctor-artifacts"


def artifact_evidence(artifacts: list[Artifact]) -> list[tuple[int, Evidence]]:
    """An offered artifact is not yet in the project: its items stay not-checked, with a reason
    that says what was generated and how to accept it (what the project lacks is said by the
    presence evidence or the rule beside it); the others say what is missing. What
    its run measured about the code (`measured`: the model does not export, say) is said as
    measured."""
    found: list[tuple[int, Evidence]] = []
    for artifact in artifacts:
        if artifact.state == "offered":
            message = (
                f"{artifact.reason}; offered as {artifact.path}, written by --apply after approval"
            )
        else:
            message = f"--artifacts {artifact.kind}: {artifact.state}: {artifact.reason}"
        verdict: Verdict = "not-applicable" if artifact.state == "not-applicable" else "not-checked"
        said = [(m.item, m.verdict, m.reason) for m in artifact.measured]
        measured = {m.item for m in artifact.measured}
        said += [(item, verdict, message) for item in artifact.items if item not in measured]
        for item, item_verdict, text in said:
            evidence = Evidence(
                source=SOURCE,
                source_version=__version__,
                kind="probe",
                message=text,
                data={"items": [item], "verdict": item_verdict, "artifact": artifact.kind},
            )
            found.append((ITEMS_BY_ID[item].point, evidence))
    return found


def accepted_coverage(
    coverage: list[CoverageEntry], artifacts: list[Artifact], written: list[str]
) -> list[CoverageEntry]:
    """The items an artifact written to the user's tree (`written`: their ids) now covers
    pass, saying so."""
    settled = {
        item: artifact
        for artifact in artifacts
        if artifact.id in written
        for item in artifact.items
    }
    return [
        entry.model_copy(
            update={
                "verdict": "pass",
                "how": f"{entry.how}; artifact: {settled[entry.item].kind}",
                "reason": f"{settled[entry.item].reason}; written as {settled[entry.item].path}",
            }
        )
        if entry.item in settled and _settles(settled[entry.item], entry)
        else entry
        for entry in coverage
    ]


RESOLVES = {"card": frozenset({"no-model-card"})}
"""Rules whose finding the artifact, once written, answers (a card answers its absence)."""


def _settles(artifact: Artifact, entry: CoverageEntry) -> bool:
    """Not a failure the artifact leaves in place: only the rules it resolves fired."""
    if entry.verdict != "fail":
        return True
    fired = entry.reason.partition(" fired: ")[2].split(", ")
    return bool(fired) and set(fired) <= RESOLVES.get(artifact.kind, frozenset())
