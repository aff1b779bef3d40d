"""The checkpoint-loading codemods on shapes seen in public code (the code is written here):
a file handed whole to `load_state_dict` holds a state_dict, so `weights_only=True` loads it
unchanged (magicleap's SuperGlue, PatchTST's best checkpoint, segment-anything's builder);
one entry of a checkpoint says nothing of the others (near miss); an entry taken at the load
and only restored into the model (Pyraformer's `torch.load(path)["state_dict"]`) can be
loaded onto the CPU first."""

from __future__ import annotations

from tests.shape_outcomes import findings
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

STATE_DICT_LOADS = """\
import torch


def restore(model, path):
    model.load_state_dict(torch.load(path))


def build(model, checkpoint):
    if checkpoint is not None:
        with open(checkpoint, "rb") as f:
            state_dict = torch.load(f)
        model.load_state_dict(state_dict)
    return model


def resume(model, path):
    checkpoint = torch.load(path)
    model.load_state_dict(checkpoint["model"])
    return checkpoint["epoch"]


def warm_start(model, path):
    state = torch.load(path)
    model.load_state_dict(state)
    return state


def adapt(model, path):
    model.load_state_dict(torch.load(path), strict=False)
"""


def _fix(rule: str, source: str, line: int) -> str | None:
    [finding] = [f for f in findings(source, rule) if f.line == line]
    target = FixTarget(
        rule=rule, file="m.py", line=line, end_line=finding.end_line, data=finding.data
    )
    codemod = codemod_for(rule)
    assert codemod is not None
    fixed = codemod.transform(source, target)
    return fixed if fixed is not None else codemod.explain(source, target)


def test_a_file_loaded_whole_into_load_state_dict_is_loaded_weights_only() -> None:
    for line, loaded in ((5, "torch.load(path)"), (11, "torch.load(f)")):
        fixed = _fix("torch-load-unsafe", STATE_DICT_LOADS, line)
        assert fixed == STATE_DICT_LOADS.replace(
            loaded, loaded.replace(")", ", weights_only=True)"), 1
        )


def test_an_entry_or_a_state_read_elsewhere_says_nothing_of_the_file() -> None:
    # `checkpoint["model"]`, the state returned to the caller, a load with `strict=False`
    # (which takes a whole checkpoint too, silently loading nothing)
    for line in (17, 23, 29):
        reason = _fix("torch-load-unsafe", STATE_DICT_LOADS, line)
        assert reason is not None and reason.startswith("nothing in this module shows")


EVALUATE_PRETRAINED = """\
import torch

device = "cuda" if torch.cuda.is_available() else "cpu"


def evaluate(model, model_save_dir, loader):
    checkpoint = torch.load(model_save_dir)["state_dict"]
    model.load_state_dict(checkpoint)
    return [model(x.to(device)) for x in loader]
"""


def test_an_entry_taken_at_the_load_for_load_state_dict_is_mapped_to_the_cpu() -> None:
    fixed = _fix("torch-load-no-map-location", EVALUATE_PRETRAINED, 7)
    assert fixed == EVALUATE_PRETRAINED.replace(
        "torch.load(model_save_dir)", 'torch.load(model_save_dir, map_location="cpu")'
    )
    used = EVALUATE_PRETRAINED.replace(
        "    return [", "    print(checkpoint.keys())\n    return ["
    )  # near miss: the entry is read besides the restore
    reason = _fix("torch-load-no-map-location", used, 7)
    assert reason is not None and reason.startswith("the loaded object is not only handed")
