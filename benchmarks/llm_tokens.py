"""Tokens the LLM reasoner spends per 1,000 audited lines, for a full 12-point walk.

Audits the bundled examples (examples/*.py; tests/fixtures/llm/*.py when there are none)
through the scripted OpenAI-compatible stub server (tests/llm_stub_server.py, a stand-in for a
hosted model; its `usage` is characters / 4), once with an empty answer cache and once again
(unchanged code: the cache must answer everything, at zero tokens and zero HTTP calls).
Target: at most 25,000 tokens per 1,000 lines, and zero on the re-run.

    .venv/bin/python benchmarks/llm_tokens.py [FILE_OR_DIR ...]
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.reasoning.llm import LLMReasoner, OpenAIConfig  # noqa: E402
from agent.reasoning.offline import OfflineReasoner  # noqa: E402
from tests.llm_stub_server import Reply, StubLLM  # noqa: E402
from tests.llm_workspace import point_requests  # noqa: E402

TARGET_PER_1000_LINES = 25_000


def typical_answer(request: dict[str, Any]) -> Reply:
    """A deterministic answer of realistic size: an explanation per reported finding and a
    not-checked line per item the tools could not judge."""
    prompt = request["messages"][-1]["content"]
    reported = re.findall(r"^- (TD-[0-9a-f]{12}) (\S+)", prompt, re.MULTILINE)
    unchecked = re.findall(r"^- (\d+\.\d+) .*\[not-checked\]$", prompt, re.MULTILINE)
    explanation = ("The device waits on the host here; the kernel queue drains and the "
                   "next step's launches are delayed until the value reaches the CPU.")
    return Reply.json({
        "findings": [],
        "explanations": [{"finding_id": fid, "explanation": f"{rule}: {explanation}"}
                         for fid, rule in reported],
        "not_checked": [f"{item}: needs a run or more context than the windows shown"
                        for item in unchecked],
    })


def sources(args: list[str]) -> list[tuple[str, Path]]:
    """(relative path in the workspace, file) for the arguments, or the bundled examples."""
    found: list[tuple[str, Path]] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found += [(p.relative_to(path).as_posix(), p) for p in sorted(path.rglob("*.py"))]
        else:
            found.append((path.name, path))
    if args:
        return found
    bundled = sorted((ROOT / "examples").glob("*.py")) or sorted(
        (ROOT / "tests" / "fixtures" / "llm").glob("*.py"))
    return [(p.name, p) for p in bundled]


def walk(stub: StubLLM, workspace: Path, cache: Path) -> LLMReasoner:
    config = OpenAIConfig(model=stub.model, base_url=stub.base_url, cache_dir=cache,
                          timeout_s=10)
    reasoner = LLMReasoner(config, workspace, OfflineReasoner())
    for request in point_requests(workspace).values():
        reasoner.reason(request)
    return reasoner


def main() -> int:
    files = sources(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "workspace"
        workspace.mkdir()
        for relpath, path in files:
            (workspace / relpath).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, workspace / relpath)
        lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for _, p in files)
        with StubLLM(context_length=32_768, fallback=typical_answer) as stub:
            first = walk(stub, workspace, Path(tmp) / "cache")
            sent, received, calls = stub.prompt_tokens, stub.completion_tokens, stub.http_calls
            stub.reset_counts()
            second = walk(stub, workspace, Path(tmp) / "cache")
            rerun_tokens = stub.prompt_tokens + stub.completion_tokens
            rerun_calls = stub.http_calls
    per_k = 1000 / max(lines, 1)
    total = (sent + received) * per_k
    names = ", ".join(rel for rel, _ in files[:5]) + (", ..." if len(files) > 5 else "")
    print(f"audited: {len(files)} file(s), {lines} lines ({names})")
    print(f"first walk (12 points): {calls} HTTP calls (incl. probe), "
          f"{sent} tokens sent, {received} received (stub usage, chars/4)")
    print(f"  client's own count: {first.usage.prompt_chars} prompt characters "
          f"= ~{first.usage.prompt_chars // 4} tokens for {first.usage.requests} requests")
    print(f"  per 1,000 lines: {sent * per_k:,.0f} sent + {received * per_k:,.0f} received "
          f"= {total:,.0f} tokens (target <= {TARGET_PER_1000_LINES:,})")
    print(f"re-run (unchanged code): {rerun_calls} HTTP calls, {rerun_tokens} tokens, "
          f"{second.usage.cache_hits} cache hits")
    ok = total <= TARGET_PER_1000_LINES and rerun_tokens == 0 and rerun_calls == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
