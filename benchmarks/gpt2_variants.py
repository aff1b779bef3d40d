"""What else a fixed GPT-2 script could gain: variants of it timed side by side, one run each.

Given a GPT-2 trainer the fix pipeline wrote (`fix_bench.py --workload gpt2 --stage propose`
or `--stage fix`), each variant is the same text with one change no codemod makes yet, and the
benchmark prints its tokens/s, TFLOP/s and MFU (nanoGPT's FLOP count, the GPU's dense bf16
peak). A variant whose change does not apply to the script says so instead of running:

- `script`: the script as given;
- `loss-in-model-graph`: the model call and the cross-entropy compiled as one function (the
  compile ladder's "step as one graph" rung now makes and verifies this change; the variant
  stays to time it on a script without the ladder);
- `max-autotune-no-cudagraphs`: `model.compile(mode="max-autotune-no-cudagraphs")`;
- `vocabulary-padded`: `vocab_size` 50257 -> 50304, a checkpoint-shape change (needs a human).

    python benchmarks/gpt2_variants.py OUT/gpt2_fixed.py --batch-size 16 --steps 40
    python benchmarks/gpt2_variants.py OUT/gpt2_fixed.py --tiny --steps 6     # CPU smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent

_STEP = (
    "            logits = model(x)\n"
    "            loss = cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))\n"
)
_COMPILE = (
    "    cross_entropy = F.cross_entropy\n"
    "    if torch.cuda.is_available():\n"
    "        model.compile()\n"
    "        cross_entropy = torch.compile(cross_entropy)\n"
)
_JOINT = (
    "    def model_loss(x, y):\n"
    "        logits = model(x)\n"
    "        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))\n"
    "\n"
    "    if torch.cuda.is_available():\n"
    "        model_loss = torch.compile(model_loss)\n"
)


def _replaced(*pairs: tuple[str, str]) -> Callable[[str], str | None]:
    """The text with every `old` replaced by its `new`; None when one of them is absent."""

    def edit(text: str) -> str | None:
        for old, new in pairs:
            if old not in text:
                return None
            text = text.replace(old, new)
        return text

    return edit


VARIANTS: dict[str, Callable[[str], str | None]] = {
    "script": lambda text: text,
    "loss-in-model-graph": _replaced(
        (_STEP, "            loss = model_loss(x, y)\n"), (_COMPILE, _JOINT)
    ),
    "max-autotune-no-cudagraphs": _replaced(
        ("model.compile()", 'model.compile(mode="max-autotune-no-cudagraphs")')
    ),
    "vocabulary-padded": _replaced(("vocab_size: int = 50257", "vocab_size: int = 50304")),
}


def _bench() -> ModuleType:
    """gpt2_fix_bench.py, for its script runner, FLOP count and model shapes."""
    spec = importlib.util.spec_from_file_location("gpt2_fix_bench", HERE / "gpt2_fix_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", type=Path, help="a fixed GPT-2 trainer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="these variants")
    args = parser.parse_args()
    bench = _bench()
    shape = bench.TINY_SHAPE if args.tiny else bench.FULL_SHAPE
    text = args.script.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="gpt2-variants-") as tmp:
        for name in args.only or VARIANTS:
            variant = VARIANTS[name](text)
            if variant is None:
                print(f"{name:28s} not applicable: its change does not match this script")
                continue
            path = Path(tmp) / f"{name}.py"
            path.write_text(variant, encoding="utf-8")
            started = time.monotonic()
            result = bench.run_script(path, args)
            tokens = result["tokens_per_s"]
            tflops = bench.flops_per_token(result["parameters"], shape) * tokens / 1e12
            peak = bench.peak_tflops(result["device"])
            mfu = f"MFU {tflops / peak:.3f}" if peak else "MFU n/a (unknown peak)"
            print(
                f"{name:28s} {tokens:>12,.0f} tokens/s  {tflops:7.1f} TFLOP/s  {mfu}  "
                f"wall {time.monotonic() - started:.0f} s  {result['device']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
