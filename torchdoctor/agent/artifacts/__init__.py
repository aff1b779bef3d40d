"""Artifacts torchdoctor writes for the user (ML tests, a model card, ...): each generated on a
copy, run in the sandbox, offered only when it runs, written to the user's tree on approval."""
