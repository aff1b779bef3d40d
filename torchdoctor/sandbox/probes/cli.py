"""Command-line entry: parse, run, report where the evidence went."""

from __future__ import annotations

import sys

from torchdoctor.sandbox.probes.config import parse_args
from torchdoctor.sandbox.probes.runner import run


def main(argv: list[str]) -> int:
    config = parse_args(argv)
    code = run(config)
    print(f"probes: evidence written to {config.out}", file=sys.stderr)
    return code
