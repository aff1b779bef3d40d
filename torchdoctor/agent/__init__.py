"""The audit domain: the checklist, the graph that walks it, checks, fixes, reasoning, reports."""
