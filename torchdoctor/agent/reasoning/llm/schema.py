"""What the model must answer, as pydantic models, and their strict JSON Schema.

One request covers one or more checklist points, so the answer is keyed by point
(`BatchAnswer.points`). Parsing is lenient on purpose (unknown keys such as a `status` the model
invents are ignored, never obeyed; a flat answer without `points` is read as one section for the
batch's first point); the schema sent for structured outputs is strict (every key required, no
others), as OpenAI's `json_schema` mode demands.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LLMFinding(Lenient):
    """One problem the model claims, to be checked against the code before it is believed."""

    checkpoint: int = Field(description="checklist point 1-12 this problem belongs to")
    item: str = Field("", description="checklist item id, e.g. '6.1'")
    rule: str = Field(description="kebab-case id; a native rule id or llm-<name>")
    severity: str = Field(description="critical | high | medium | low | info")
    title: str
    file: str = Field(description="path exactly as given in the code block header")
    line: int = Field(description="line number of the snippet's first line")
    snippet: str = Field(description="the flagged code, copied verbatim from that line")
    explanation: str = Field(description="why it is a problem, down to what the hardware does")
    fix_diff: str = Field("", description="unified diff fixing it, or empty")


class LLMExplanation(Lenient):
    """A deeper explanation of a finding the tools already reported."""

    finding_id: str
    explanation: str


class PointAnswer(Lenient):
    findings: list[LLMFinding] = Field(default_factory=list)
    explanations: list[LLMExplanation] = Field(default_factory=list)
    not_checked: list[str] = Field(
        default_factory=list, description="what could not be checked from what was shown, and why"
    )


class PointSection(PointAnswer):
    """The answer for one checklist point of the request."""

    point: int = Field(description="the checklist point this section answers")


UNSPECIFIED_POINT = 0
"""The point of a section read from a flat answer (no `points` key)."""


class BatchAnswer(Lenient):
    points: list[PointSection] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _flat_answer(cls, data: Any) -> Any:
        """A model that ignores the wrapper answers one flat section: keep it, don't repair."""
        if isinstance(data, dict) and "points" not in data:
            keys = ("findings", "explanations", "not_checked")
            if any(key in data for key in keys):
                section = {key: data[key] for key in keys if key in data}
                return {"points": [{**section, "point": UNSPECIFIED_POINT}]}
        return data


class ProbeAnswer(Lenient):
    ok: bool


def strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON Schema with every property required and no additional properties."""
    schema = copy.deepcopy(model.model_json_schema())

    def tighten(node: Any, names: bool = False) -> None:
        """`names`: the node maps property or definition names to schemas (keep its keys)."""
        if isinstance(node, dict):
            if not names:
                node.pop("default", None)
                node.pop("title", None)
                if node.get("type") == "object" and "properties" in node:
                    node["required"] = sorted(node["properties"])
                    node["additionalProperties"] = False
            for key, value in node.items():
                tighten(value, names=not names and key in ("properties", "$defs"))
        elif isinstance(node, list):
            for value in node:
                tighten(value)

    tighten(schema)
    return schema
