"""What the executor's fork server loads once, before it forks any audit's worker.

Each worker is a fresh fork, so whatever an audit loads on first use (the graph's nodes, the
native rules, the ledger's templates) it would load again in every audit: under concurrent
audits that per-audit start-up competes with the analyses themselves for the same cores.
Loaded here, every worker inherits it ready. Nothing here starts a thread or opens a file
that a fork would share.
"""

from __future__ import annotations

import importlib

from torchdoctor.agent.checks.fingerprint import code_fingerprint
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.gather import installed_torch_version
from torchdoctor.agent.markdown_env import templates

MODULES = (
    "torchdoctor.agent.static_path",  # the graph's nodes, LangGraph-free
    "torchdoctor.agent.checks.linters.runner",  # the peers' adapters
    "torchdoctor.agent.checks.linters.merge",  # their evidence, merged with ours
    "torchdoctor.agent.checks.linters.peer_veto",
    "torchdoctor.agent.checks.analysis.callgraph",  # what some rules load on first use
    "torchdoctor.agent.localise",
    "torchdoctor.agent.reasoning.llm",  # the reasoner's configuration
)

for name in MODULES:
    importlib.import_module(name)
all_rules()
for template in templates().list_templates():  # compiled once (the ledger includes others)
    templates().get_template(template)
installed_torch_version()
code_fingerprint()  # the result caches' keys read the checks' files once, here
