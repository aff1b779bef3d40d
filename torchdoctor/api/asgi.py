"""The service as a module-level ASGI app, configured from the environment (`TORCHDOCTOR_*`).

For servers that import an app by path: `uvicorn torchdoctor.api.asgi:app`, and the LangGraph
platform, which mounts it next to the exported graph (`langgraph.json` `http.app`).
"""

from __future__ import annotations

from torchdoctor.api.app import create_app

app = create_app()
