"""The probes harness: run a user's training or inference script for a bounded number of
steps, instrumented, and write an evidence document (JSON, `SCHEMA_VERSION`).

Static analysis guesses; a run knows. This package runs inside the sandbox and imports only
torch and the standard library. Entry point:
`python -m torchdoctor.sandbox.probes SCRIPT [ARGS...]`.
"""

SCHEMA_VERSION = 1
TOOL_NAME = "torchdoctor-probes"
