"""The compiled audit graph as a module-level object, without a checkpointer: what
`langgraph.json` names for `langgraph dev` / LangGraph Studio. It lives apart from graph.py so
that the nodes can be imported without loading LangGraph."""

from torchdoctor.agent.graph import build_graph

graph = build_graph()
