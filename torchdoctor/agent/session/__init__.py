"""Review sessions (chat): a session holds an audit, its findings, the pending approval and the
conversation; commands answer from the evidence, questions go to the LLM's tool loop."""
