"""Codemod sweep round 7: shapes from held-out repositories where a fix was wrong, a finding
false, or a refusal gave no reason (written here in the shape, not copied)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.unit.test_codemod_round6 import _findings, _fix

# --- factory-without-device-in-step ---------------------------------------------------------

# a speech model's smoke-training script: lengths built per step beside the batch
SPEECH_STEP = (
    Path(__file__).parents[1]
    / "fixtures/rules/factory-without-device-in-step/negative_sequence_lengths_kept_on_the_host.py"
).read_text()


def test_sequence_lengths_kept_on_the_host_are_not_reported() -> None:
    assert _findings(SPEECH_STEP, "factory-without-device-in-step") == []


def test_a_class_label_tensor_beside_them_still_is() -> None:
    labelled = SPEECH_STEP.replace(
        "loss = criterion(outputs.transpose(0, 1), targets, output_lengths, target_lengths)",
        "loss = nn.functional.cross_entropy(outputs, torch.LongTensor([1, 2, 0]))",
    )
    assert len(_findings(labelled, "factory-without-device-in-step")) == 1


# a legacy typed constructor of a list handed to the loss: it cannot take a CUDA device=
LEGACY_LABELS = """\
import torch
import torch.nn.functional as F


def train(model, loader, optimizer):
    for batch in loader:
        images = batch["images"].cuda()
        logits = model(images)
        labels = torch.LongTensor([g.label for g in batch["graphs"]])
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def test_a_legacy_constructor_becomes_torch_tensor_with_its_dtype() -> None:
    fixed, _ = _fix(LEGACY_LABELS, "factory-without-device-in-step")
    assert fixed is not None
    assert (
        'labels = torch.tensor([g.label for g in batch["graphs"]], dtype=torch.int64, '
        "device=logits.device)" in fixed
    )
    # the legacy form raises given a device other than the CPU; the new one does not
    meta = torch.device("meta")
    made = eval("torch.tensor([1, 2], dtype=torch.int64, device=meta)")
    assert made.dtype == torch.LongTensor([1, 2]).dtype and made.device == meta
    try:
        torch.LongTensor([1, 2], device=meta)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the legacy constructor took a non-CPU device")


def test_from_numpy_becomes_as_tensor_on_the_device() -> None:
    source = LEGACY_LABELS.replace(
        'torch.LongTensor([g.label for g in batch["graphs"]])',
        'torch.from_numpy(np.array(batch["labels"]))',
    ).replace("import torch\n", "import numpy as np\nimport torch\n", 1)
    fixed, _ = _fix(source, "factory-without-device-in-step")
    assert fixed is not None
    assert 'torch.as_tensor(np.array(batch["labels"]), device=logits.device)' in fixed


# --- validation-with-grad -------------------------------------------------------------------

MODEL_FN = """\
import torch


def get_model_fn(model, train=False):
    def model_fn(x, labels):
        if not train:
            model.eval()
            return model(x, labels)
        else:
            model.train()
            return model(x, labels)

    return model_fn
"""


def test_a_model_function_that_sets_the_mode_from_a_flag_is_not_an_evaluation() -> None:
    assert _findings(MODEL_FN, "validation-with-grad", "utils.py") == []


def test_a_train_switch_that_only_restores_the_mode_does_not_hide_one() -> None:
    restoring = """\
import torch


def detect(model, img):
    model.eval()
    out = model(img)
    model.train()
    return out
"""
    assert len(_findings(restoring, "validation-with-grad", "utils.py")) == 1


# --- no-torch-compile -----------------------------------------------------------------------

# a trainer whose step hands the model to a helper and scores the batch with a metric object
TRAINER_WITH_METRIC = """\
import torch
from metrics import CharacterErrorRate

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    def __init__(self, optimizer, vocab, device):
        self.optimizer = optimizer
        self.device = device
        self.metric = CharacterErrorRate(vocab)

    def _forward(self, model, inputs, targets):
        output = model(inputs)
        return output, torch.nn.functional.cross_entropy(output, targets)

    def train_epoch(self, model, loader):
        model.train()
        for inputs, targets in loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            model = model.to(self.device)
            output, loss = self._forward(model=model, inputs=inputs, targets=targets)
            cer = self.metric(targets, output.max(-1)[1])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            torch.cuda.empty_cache()
"""


def test_a_metric_object_of_another_file_is_not_compiled_as_the_model() -> None:
    fixed, _ = _fix(TRAINER_WITH_METRIC, "no-torch-compile")
    assert fixed is not None
    assert "self.metric.compile()" not in fixed
    assert "model.compile()" in fixed


def test_an_imported_class_used_as_a_module_is_still_the_model() -> None:
    source = TRAINER_WITH_METRIC.replace(
        "self.metric = CharacterErrorRate(vocab)",
        "self.metric = CharacterErrorRate(vocab).to(device)",
    )
    fixed, _ = _fix(source, "no-torch-compile")
    assert fixed is not None and "self.metric.compile()" in fixed


# --- any codemod: a Python 2 file ------------------------------------------------------------

# a graph model's training script from the Python 2 days: the rules read it, no edit can parse
PYTHON2_TRAINING = """\
import torch
import torch.nn as nn


def run(model, nodes, labels):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.7)
    for batch in range(100):
        optimizer.zero_grad()
        loss = model.loss(nodes[:256], labels[:256])
        loss.backward()
        optimizer.step()
        print batch, loss.data[0]
"""


def test_a_file_that_is_not_python_3_is_refused_with_the_reason() -> None:
    fixed, reason = _fix(PYTHON2_TRAINING, "scalar-loss-indexed")
    assert fixed is None
    assert reason is not None
    assert "does not parse as Python 3 (line 12: Missing parentheses" in reason


# --- host-sync-in-step ----------------------------------------------------------------------

# an epoch loop that plots each step's loss from a tensor it fills on the host
PLOTTED_STEP_LOSSES = """\
import torch


def run_epoch(model, loader, optimizer, vis):
    total = 0.0
    step_losses = torch.Tensor(len(loader))
    for i, (x, y) in enumerate(loader):
        loss = torch.nn.functional.mse_loss(model(x.cuda()), y.cuda())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_losses[i] = loss.item()
        if i % 10 == 0:
            vis.line(Y=step_losses[: i + 1])
    return total
"""


def test_a_write_into_a_host_tensor_is_refused_as_a_copy_either_way() -> None:
    fixed, reason = _fix(PLOTTED_STEP_LOSSES, "host-sync-in-step")
    assert fixed is None
    assert reason is not None and "a tensor this function makes on the host" in reason


def test_a_write_into_a_list_keeps_the_readers_reason() -> None:
    listed = PLOTTED_STEP_LOSSES.replace(
        "step_losses = torch.Tensor(len(loader))", "step_losses = [0.0] * len(loader)"
    )
    fixed, reason = _fix(listed, "host-sync-in-step")
    assert fixed is None
    assert reason is not None and "whose readers" in reason


# --- torch-load-unsafe ----------------------------------------------------------------------

# a dataset caching its features: loaded when the cache exists, else computed and saved
FEATURE_CACHE = """\
import os
import torch
from audio import spectrogram


class SpeechDataset(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __getitem__(self, index):
        filename = self.files[index]
        spec_filename = filename.replace(".wav", ".spec.pt")
        if os.path.exists(spec_filename):
            spec = torch.load(spec_filename)
        else:
            spec = spectrogram(filename)
            spec = torch.squeeze(spec, 0)
            torch.save(spec, spec_filename)
        return spec
"""


def test_a_cached_tensor_made_by_torch_is_loaded_weights_only() -> None:
    fixed, _ = _fix(FEATURE_CACHE, "torch-load-unsafe")
    assert fixed is not None
    assert "spec = torch.load(spec_filename, weights_only=True)" in fixed


def test_a_cache_of_what_a_helper_returns_stays_refused() -> None:
    helper = FEATURE_CACHE.replace("            spec = torch.squeeze(spec, 0)\n", "")
    fixed, reason = _fix(helper, "torch-load-unsafe")
    assert fixed is None and reason is not None


# a segmentation script: a checkpoint every 10 epochs under a %-template, the last one
# evaluated by the same script
TEMPLATED_CHECKPOINTS = """\
import torch


def main(model, optimizer, loader, args):
    model_fname = "data/deeplab_epoch%d.pth"
    if args.train:
        for epoch in range(0, args.epochs):
            for inputs, target in loader:
                pass
            if epoch % 10 == 9:
                torch.save(
                    {
                        "epoch": epoch + 1,
                        "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                    },
                    model_fname % (epoch + 1),
                )
    else:
        checkpoint = torch.load(model_fname % args.epochs)
        model.load_state_dict(checkpoint["state_dict"])
"""


def test_a_checkpoint_of_the_same_path_template_is_loaded_weights_only() -> None:
    fixed, _ = _fix(TEMPLATED_CHECKPOINTS, "torch-load-unsafe")
    assert fixed is not None
    assert "torch.load(model_fname % args.epochs, weights_only=True)" in fixed


def test_a_template_whose_save_holds_other_objects_stays_refused() -> None:
    with_args = TEMPLATED_CHECKPOINTS.replace(
        '"epoch": epoch + 1,', '"epoch": epoch + 1,\n                        "args": args,'
    )
    fixed, reason = _fix(with_args, "torch-load-unsafe")
    assert fixed is None and reason is not None
