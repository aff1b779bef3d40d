"""What the executor's fork server loads once, before it forks any audit's worker.

Each worker is a fresh fork, so whatever an audit loads on first use (the graph's nodes, the
native rules, the ledger's templates, the Python peers) it would load again in every audit:
under concurrent audits that per-audit start-up competes with the analyses themselves for the
same cores. Loaded here, every worker inherits it ready, and hands its Python peers' runs to the
warm peer workers started last (`pool`) rather than starting them (~1.2 s of CPU an audit).
Nothing here leaves a thread running or a file open that a fork would share (the store's engine
is kept, its connections closed), but the pool's request sockets, which every worker is meant
to share.
"""

from __future__ import annotations

import gc
import importlib

from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.checks.fingerprint import code_fingerprint
from torchdoctor.agent.checks.linters import pool
from torchdoctor.agent.checks.linters.warm_up import warm_peers
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.cpus import usable_cpus
from torchdoctor.agent.gather import installed_torch_version
from torchdoctor.agent.markdown_env import templates
from torchdoctor.agent.options import linters_off_by_env
from torchdoctor.api.reuse import peer_versions
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.worker import warm_audit, warm_store
from torchdoctor.sandbox.lifeline import libc

MODULES = (
    "torchdoctor.agent.static_path",  # the graph's nodes, LangGraph-free
    "torchdoctor.agent.checks.linters.runner",  # the peers' adapters
    "torchdoctor.agent.checks.linters.merge",  # their evidence, merged with ours
    "torchdoctor.agent.checks.linters.peer_veto",
    "torchdoctor.agent.checks.analysis.callgraph",  # what some rules load on first use
    "torchdoctor.agent.localise",
    "torchdoctor.agent.reasoning.llm",  # the reasoner's configuration
    "logging.config",  # the worker's JSON logs
)

for name in MODULES:
    importlib.import_module(name)
all_rules()
catalogue()  # the report names each rule from it
for template in templates().list_templates():  # compiled once (the ledger includes others)
    templates().get_template(template)
installed_torch_version()
code_fingerprint()  # the result caches' keys read the checks' files once, here
if not linters_off_by_env():
    warm_peers()
peer_versions()  # part of every audit's reuse key
libc()  # each tool and sandbox job a worker starts sets its death signal through it
warm_store()  # the worker's settings and store, its engine without a connection
warm_audit()  # what an audit sets up on first use (after the peers: it runs them warm)
# Kept for the fork server's life: out of the collector's sight, a worker's collections
# neither walk it (CPU) nor touch its pages (copy-on-write faults).
gc.collect()
gc.freeze()
if not linters_off_by_env():  # last: its processes are forks of this warm, thread-free state
    pool.start(per_tool=min(ApiSettings().audit_workers, usable_cpus()))
