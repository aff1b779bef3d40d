"""The semantic model every rule queries.

- `vocabulary`: the names it recognises (data in `checks/data/vocabulary.json`);
- `gradmode`: whether autograd records at a node ('on' / 'off' / 'maybe');
- `callgraph`: which of the module's functions a call runs (`ctx.calls`);
- `project`: module summaries that link calls, models and losses across files.

Def-use and value questions (`ctx.flow`) and training loops (`ctx.loops`) sit on the same
per-module context; memo tables live on it too (`ctx.memo_table`), never in process globals.
"""
