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


ALIASES = """\
from datasets import load_dataset
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import AutoConfig, AutoTokenizer


def init_model(args, model_args, config, uri):
    text_model = args.text_model
    t5 = AutoConfig.from_pretrained(text_model)
    tok = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    name = config.hf_name
    hf_config = AutoConfig.from_pretrained(name)
    with resolve(uri) as repo_id:
        path = snapshot_download(repo_id=repo_id)
    local = load_dataset("parquet", data_files=args.data_path, split="train")
    reference = "google-t5/t5-small"
    ref = AutoConfig.from_pretrained(reference)
    version = f"{args.org}/encodec"
    enc = AutoConfig.from_pretrained(version)
    hub = load_dataset("imdb", split="train")
    return t5, tok, hf_config, path, local, ref, enc, hub


def load_generator(file_or_url_or_id, filename):
    def load_model_config():
        file = hf_hub_download(repo_id=file_or_url_or_id, filename=f"{filename}.yaml")
        return file

    return load_model_config()


if __name__ == "__main__":
    cli = parse_args()
    audio_model = cli.audio_model
    encodec = AutoConfig.from_pretrained(audio_model)
"""


def _alias_reason(line: int) -> str | None:
    evidence = Evidence(
        source="bandit",
        kind="linter",
        message="B615",
        file="m.py",
        line=line,
        data={"code": "B615"},
    )
    return PeerVeto(lambda _: ALIASES).reason(evidence)


def test_names_bound_only_to_outside_values_are_ruled_out() -> None:
    # a local alias of a command-line value, `a or b` of settings, a configuration alias, a
    # `with ... as` binding from a call, a parameter of the function around a nested helper,
    # a script's top-level alias of a command-line value
    for line in (8, 9, 11, 13, 25, 34):
        assert "outside this code" in (_alias_reason(line) or ""), line


def test_packaged_builders_download_nothing() -> None:
    assert "packaged with `datasets`" in (_alias_reason(14) or "")


def test_names_bound_to_hub_names_in_the_code_stay() -> None:
    assert _alias_reason(16) is None  # an alias of a literal hub name
    assert _alias_reason(18) is None  # an f-string written here names the repository
    assert _alias_reason(19) is None  # a hub dataset, not a packaged builder
