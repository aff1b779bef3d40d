"""The JSON Schemas torchdoctor publishes, generated from the pydantic models that write and
read those documents (so a schema cannot drift from the code)."""

from __future__ import annotations

from typing import Any


def json_schema(name: str) -> dict[str, Any]:
    if name == "report":
        from torchdoctor.agent.models import AuditReport

        schema = AuditReport.model_json_schema(mode="serialization")
        title = "torchdoctor audit report (torchdoctor audit --format json)"
    elif name == "probe-document":
        from torchdoctor.agent.evidence.probe_schema import ProbeDocument

        schema = ProbeDocument.model_json_schema(mode="validation")
        title = "torchdoctor probes evidence document (python -m torchdoctor.sandbox.probes)"
    else:
        raise ValueError(f"unknown schema {name!r}: report or probe-document")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        **{k: v for k, v in schema.items() if k != "title"},
    }
