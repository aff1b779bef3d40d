"""bandit B615 (a Hugging Face download without `revision=`) is ruled out where the code does
not name the repository: a command-line or configuration value, a parameter, a path built by
a call. A hub name written in the code, or bound to a name in it, stays a finding."""

from __future__ import annotations

from torchdoctor.agent.checks.linters.peer_veto import PeerVeto
from torchdoctor.agent.models import Evidence

HUB = """\
import os

from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer

BASE = "gpt2"


def load_pretrained_model(model_path, model_base=None, device_map="auto"):
    tokenizer = AutoTokenizer.from_pretrained(model_path, use_fast=False)
    return AutoModelForCausalLM.from_pretrained(model_path, device_map=device_map), tokenizer


def main(args, cfg):
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path)
    vocoder = AutoModelForCausalLM.from_pretrained(cfg["vocoder"]["local_path"])
    best = AutoModelForCausalLM.from_pretrained(os.path.join(args.output_dir, "best"))
    weights = hf_hub_download(repo_id=args.repo, filename="model.safetensors")
    reference = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
    base = AutoTokenizer.from_pretrained(BASE)
    both = AutoTokenizer.from_pretrained(args.tok), AutoTokenizer.from_pretrained("bert-base")
    return model, vocoder, best, weights, reference, base, both
"""


def _reason(line: int) -> str | None:
    evidence = Evidence(
        source="bandit",
        kind="linter",
        message="B615",
        file="m.py",
        line=line,
        data={"code": "B615"},
    )
    return PeerVeto(lambda _: HUB).reason(evidence)


def test_repositories_chosen_outside_the_code_are_ruled_out() -> None:
    for line in (10, 11, 15, 16, 17, 18):  # parameters, args/cfg values, a built path
        assert "outside this code" in (_reason(line) or ""), line


def test_hub_names_written_in_the_code_stay() -> None:
    assert _reason(19) is None  # a literal hub name
    assert _reason(20) is None  # a module constant: a hub name written in the code
    assert _reason(21) is None  # one download of the line names its repository
