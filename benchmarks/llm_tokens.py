"""Tokens the LLM reasoner spends per 1,000 audited lines, for a full 12-point walk.

Audits the bundled examples (examples/*.py; tests/fixtures/llm/*.py when there are none)
through the scripted OpenAI-compatible stub server (tests/llm_stub_server.py, a stand-in for a
hosted model; its `usage` is characters / 4), once with an empty answer cache and once again
(unchanged code: the cache must answer everything, at zero tokens and zero HTTP calls). The
re-run reasons over the first walk's requests; the static findings are gathered again only to
check that unchanged code gives the same ones (a warning says when it did not, e.g. because rules
were edited while the benchmark ran).
The walk is the audit graph's: `prepare` with every point's request, then the phases in order
(so the reasoner batches points into as few requests as its token budget allows).
Target: at most 25,000 tokens per 1,000 lines, and zero on the re-run; PASS needs both, for
every corpus, with no point degraded.

    .venv/bin/python benchmarks/llm_tokens.py [FILE_OR_DIR ...]
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.llm_stub_server import Reply, StubLLM  # noqa: E402
from tests.llm_workspace import point_requests  # noqa: E402
from torchdoctor.agent.checklist import PHASES  # noqa: E402
from torchdoctor.agent.reasoning.base import PointRequest  # noqa: E402
from torchdoctor.agent.reasoning.llm import OpenAIConfig  # noqa: E402
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner  # noqa: E402
from torchdoctor.agent.reasoning.offline import OfflineReasoner  # noqa: E402

TARGET_PER_1000_LINES = 25_000


def typical_answer(request: dict[str, Any]) -> Reply:
    """A deterministic answer of realistic size, one section per point asked: an explanation
    per reported finding and a not-checked line per item the tools could not judge."""
    prompt = request["messages"][-1]["content"]
    asked = re.search(r"^Review checklist points? ([\d, ]+)\.", prompt, re.MULTILINE)
    points = [int(p) for p in asked.group(1).split(",")] if asked else []
    reported = re.findall(r"^- (TD-[0-9a-f]{12}) (\d+) (\S+)", prompt, re.MULTILINE)
    unchecked = re.findall(r"^((\d+)\.\d+) .*\[\?\]$", prompt, re.MULTILINE)
    explanation = (
        "The device waits on the host here; the kernel queue drains and the "
        "next step's launches are delayed until the value reaches the CPU."
    )
    return Reply.json(
        {
            "points": [
                {
                    "point": point,
                    "findings": [],
                    "explanations": [
                        {"finding_id": fid, "explanation": f"{rule}: {explanation}"}
                        for fid, owner, rule in reported
                        if int(owner) == point
                    ],
                    "not_checked": [
                        f"{item}: needs a run or more context than the code shown"
                        for item, owner in unchecked
                        if int(owner) == point
                    ],
                }
                for point in points
            ]
        }
    )


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
        (ROOT / "tests" / "fixtures" / "llm").glob("*.py")
    )
    return [(p.name, p) for p in bundled]


def walk(
    stub: StubLLM, workspace: Path, cache: Path, requests: dict[int, PointRequest]
) -> LLMReasoner:
    """A full 12-point walk as the audit graph does it: `prepare`, then the phases in order,
    the points of a phase in parallel."""
    config = OpenAIConfig(model=stub.model, base_url=stub.base_url, cache_dir=cache, timeout_s=10)
    reasoner = LLMReasoner(config, workspace, OfflineReasoner())
    reasoner.prepare(requests)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for phase in PHASES:
            list(pool.map(reasoner.reason, [requests[p] for p in phase.points]))
    return reasoner


def measure(files: list[tuple[str, Path]], tmp: Path) -> dict[str, int]:
    """Tokens of a first 12-point walk and of an unchanged re-run, as the stub counted them."""
    workspace = tmp / "workspace"
    workspace.mkdir(parents=True)
    for relpath, path in files:
        (workspace / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, workspace / relpath)
    with StubLLM(context_length=32_768, fallback=typical_answer) as stub:
        gathered = point_requests(workspace)
        first = walk(stub, workspace, tmp / "cache", gathered)
        figures = {
            "lines": sum(len(p.read_text(encoding="utf-8").splitlines()) for _, p in files),
            "sent": stub.prompt_tokens,
            "received": stub.completion_tokens,
            "calls": stub.http_calls,
            "requests": first.usage.requests,
            "prompt_chars": first.usage.prompt_chars,
            "degraded": len(first.degraded),
        }
        stub.reset_counts()
        again = point_requests(workspace)
        figures["static_changed"] = int(again != gathered)
        second = walk(stub, workspace, tmp / "cache", gathered)
        figures["rerun_tokens"] = stub.prompt_tokens + stub.completion_tokens
        figures["rerun_calls"] = stub.http_calls
        figures["rerun_hits"] = second.usage.cache_hits
        figures["rerun_requests"] = second.usage.requests
    return figures


def report(label: str, files: list[tuple[str, Path]], f: dict[str, int]) -> float:
    names = ", ".join(rel for rel, _ in files[:3]) + (", ..." if len(files) > 3 else "")
    per_k = 1000 / max(f["lines"], 1)
    total = (f["sent"] + f["received"]) * per_k
    print(f"{label}: {len(files)} file(s), {f['lines']} lines ({names})")
    print(
        f"  first walk: {f['requests']} LLM requests ({f['calls']} HTTP calls incl. the "
        f"capability probe and model list), {f['sent']:,} tokens sent, {f['received']:,} "
        f"received (stub usage, chars/4; client counted {f['prompt_chars']:,} prompt chars); "
        f"{f['degraded']} point(s) degraded"
    )
    print(
        f"  per 1,000 lines: {f['sent'] * per_k:,.0f} sent + {f['received'] * per_k:,.0f} "
        f"received = {total:,.0f} tokens (target <= {TARGET_PER_1000_LINES:,})"
    )
    print(
        f"  re-run (unchanged): {f['rerun_requests']} LLM requests, {f['rerun_calls']} HTTP "
        f"calls, {f['rerun_tokens']} tokens, {f['rerun_hits']} cache hits"
    )
    if f["static_changed"]:
        print(
            "  warning: the static findings of the unchanged code differed when gathered again "
            "(rules edited while this ran, or a nondeterministic rule); the re-run used the "
            "first walk's requests"
        )
    return total


def main() -> int:
    """Given paths: measure them. Otherwise the bundled examples, a larger corpus
    (tests/fixtures) and a one-line file (the fixed cost of a walk, whatever the code)."""
    corpora = (
        {"audited": sources(sys.argv[1:])}
        if sys.argv[1:]
        else {
            "bundled examples": sources([]),
            "larger corpus (tests/fixtures)": sources([str(ROOT / "tests" / "fixtures")]),
        }
    )
    ok = True
    totals: dict[str, tuple[float, dict[str, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, files) in enumerate(corpora.items()):
            figures = measure(files, Path(tmp) / str(index))
            totals[label] = (report(label, files, figures), figures)
            ok &= figures["rerun_tokens"] == 0 and figures["rerun_calls"] == 0
            ok &= figures["degraded"] == 0
        one_line = Path(tmp) / "one_line.py"
        one_line.write_text("import torch\n", encoding="utf-8")
        fixed = measure([("one_line.py", one_line)], Path(tmp) / "fixed")
    overhead = fixed["sent"] + fixed["received"]
    print(
        f"fixed cost of a 12-point walk (one-line file): {overhead:,} tokens "
        f"in {fixed['requests']} request(s) (system prompt, items, guidance)"
    )
    for label, (total, figures) in totals.items():
        marginal = (figures["sent"] + figures["received"] - overhead) * 1000 / figures["lines"]
        meets = total <= TARGET_PER_1000_LINES
        print(
            f"{label}: {total:,.0f} tokens per 1,000 lines "
            f"({'meets' if meets else 'over'} target); beyond the fixed cost "
            f"{marginal:,.0f} per 1,000 lines"
        )
        ok &= meets
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
