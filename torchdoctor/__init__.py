"""torchdoctor: audit PyTorch code along a 12-point checklist, with evidence.

The package's first level mirrors the design: `agent` (the audit graph and its domain),
`sandbox` (where untrusted code runs), `prompts` (LLM templates). This module imports nothing,
because the sandbox runs `python -m torchdoctor.sandbox.probes` with only torch available.
"""

__version__ = "0.2.0"
