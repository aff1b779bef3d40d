"""The names the semantic model recognises (grad-mode contexts, optimizers, losses, ...).

The lists live in `checks/data/vocabulary.json`, so extending what counts as a DataLoader or a
detaching method is a data change; this module only types them, once per process.
"""

from __future__ import annotations

import re

from torchdoctor.agent.checks.data import load_table


def _names(key: str) -> frozenset[str]:
    values = load_table("vocabulary.json")[key]
    return frozenset(str(v) for v in values)


def _producers(kind: str) -> frozenset[str]:
    values = load_table("vocabulary.json")["probability_producers"][kind]
    return frozenset(str(v) for v in values)


GRAD_OFF = _names("grad_off")
SET_GRAD_ENABLED = _names("set_grad_enabled")
NN_MODULE_BASES = _names("nn_module_bases")
MODEL_FACTORY_PREFIXES = tuple(sorted(_names("model_factory_prefixes")))
# Libraries whose capitalised classes are layers (`nn.Linear`, torch_geometric's `GCNConv`).
LAYER_LIBRARY_PREFIXES = tuple(sorted(_names("layer_library_prefixes")))
DATA_TRANSFORM_PREFIXES = tuple(sorted(_names("data_transform_prefixes")))
# Methods of a network that run it (`generator.module.infer(x)`, `model.generate(ids)`).
MODEL_RUN_METHODS = _names("model_run_methods")
NON_NETWORK_CLASSES = tuple(sorted(_names("non_network_classes")))
OPTIMIZER_NAMES = _names("optimizers")
OPTIMIZERS = frozenset(f"torch.optim.{name}" for name in OPTIMIZER_NAMES)
FUSABLE_OPTIMIZERS = frozenset(f"torch.optim.{name}" for name in _names("fusable_optimizers"))
DATALOADERS = _names("dataloaders")
# Names of held-out splits (a `split="val"` argument, a `{"train": ..., "test": ...}` key, a
# `val_loader`, a `for phase in ("train", "eval")` loop), and those of validation alone.
HELD_OUT_SPLITS = _names("held_out_splits")
# Cross-validation splitters whose folds come back as sorted index arrays: their `shuffle=`
# draws which rows fall in each fold, never the order the rows are visited in.
FOLD_SPLITTERS = _names("fold_splitters")
VALIDATION_SPLITS = _names("validation_splits")
SCHEDULER_HINTS = tuple(sorted(_names("scheduler_hints")))
LOSS_FUNCTIONS = _names("loss_functions")
NLL_LOSSES = _names("nll_losses")
# Losses that average over the batch unless told otherwise (`reduction="mean"` by default).
MEAN_REDUCED_LOSSES = _names("mean_reduced_losses")
# Losses with no prediction slot: `F.mse_loss(returns, values)` is written either way round.
SYMMETRIC_LOSSES = _names("symmetric_losses")
# Packages that show or store results (plots, progress bars, images, configs): a call of
# theirs runs no model and draws no torch random value.
DISPLAY_LIBRARIES = _names("display_libraries")
# Libraries whose values are never torch tensors (arrays, tables, plots).
ARRAY_LIBRARIES = _names("array_libraries")
SOFTMAX = _producers("softmax")
LOG_SOFTMAX = _producers("log_softmax")
SIGMOID = _producers("sigmoid")
RECURRENT_LAYERS = _names("recurrent_layers")
# `torch.nn` classes that register the modules or parameters they hold (by class name).
MODULE_CONTAINERS = _names("module_containers")
DETACHING_METHODS = _names("detaching_methods")
DETACHING_BUILTINS = _names("detaching_builtins")
HOST_COPY_HELPERS = _names("host_copy_helpers")
"""Project helpers named for a copy to NumPy or a Python number (`to_numpy(loss)`, in mpd's
and many trainers' utilities): whatever their body, an array or a float holds no graph."""
AGGREGATING_BUILTINS = _names("aggregating_builtins")
FOLDING_FUNCTIONS = _names("folding_functions")
NON_GRAD_TORCH = _names("non_grad_torch")
PASSTHROUGH_METHODS = _names("passthrough_methods")
PASSTHROUGH_FUNCTIONS = _names("passthrough_functions")
TENSOR_FACTORIES = _names("tensor_factories")
DETERMINISTIC_REQUESTS = _names("deterministic_requests")
ENVIRONMENT_HINTS = tuple(sorted(_names("environment_hints")))
ENVIRONMENT_STEPS = _names("environment_steps")
# Layers that hold no parameters (`nn.Dropout`, `nn.ReLU`, `nn.MaxPool2d`; not `nn.PReLU`).
PARAMETER_FREE_LAYERS = _names("parameter_free_layers")
# Layers that own parameters or running statistics (`nn.Linear`, `nn.LayerNorm`, `nn.LSTM`;
# `nn.Parameter` itself), and the dropout layers, which own none but follow `model.eval()`.
PARAMETER_LAYERS = _names("parameter_layers")
DROPOUT_LAYERS = _names("dropout_layers")
# Methods that run one training step of a trainer object, often defined in another file
# (`losses = train_util.train_step(imgs, boxes, labels)`): the loop calling them trains.
TRAINING_STEP_METHODS = _names("training_step_methods")
# How a model's own inference entry points are named (`predict_proba`, `sample`,
# `decode_greedy`), besides `forward` and names ending in it (`incremental_forward`): calling
# one runs the model. `generate` is not among them: Hugging Face's (and most libraries')
# already runs without autograd.
INFERENCE_METHOD_PREFIXES = tuple(sorted(_names("inference_method_prefixes")))
# Helpers that seed Python's `random`, NumPy's global generator and torch at once
# (`seed_everything`, `transformers.set_seed`, the zero/delu library's `set_randomness`).
ALL_LIBRARY_SEEDERS = _names("all_library_seeders")
# The process-wide generators a seed fix may have to seed (library -> the namespace of its
# module-level draws: `random.shuffle`, `np.random.rand`), and the names in those namespaces
# that draw from no global state (`random.Random(0)`, `np.random.default_rng()`) or only
# seed or save it.
GLOBAL_GENERATORS: dict[str, str] = {
    str(k): str(v) for k, v in load_table("vocabulary.json")["global_generators"].items()
}
OWN_STATE_GENERATORS = _names("own_state_generators")
# Library functions that draw from NumPy's global generator unless given a `random_state`.
NUMPY_DRAWING_FUNCTIONS = _names("numpy_drawing_functions")
# What keeps a tensor's number of dimensions: elementwise functions and layers that act on
# the last axis (`F.relu`, `nn.Linear`), for `tensor_rank`.
RANK_KEEPING_FUNCTIONS = _names("rank_keeping_functions")
RANK_KEEPING_LAYERS = _names("rank_keeping_layers")
TORCH_FRAMEWORKS = tuple(sorted(_names("torch_frameworks")))
OTHER_FRAMEWORKS = tuple(sorted(_names("other_frameworks")))
# Wrappers whose forward runs the module they are given, in that module's mode and layers
# (`DistributedDataParallel(model)`, `torch.compile(model)`).
MODULE_WRAPPERS = _names("module_wrappers")
# Keywords that name or label one run (a logger's `name=`, `id=`): one value may serve several.
RUN_LABEL_KEYWORDS = _names("run_label_keywords")


def is_scheduler_name(name: str) -> bool:
    """`scheduler`, `lr_sched`, `warmup`: a name that says it holds an LR scheduler. The last
    word decides when it names an optimizer: `custom_lr_optimizer`, `warmup_optim` hold an
    optimizer that sets its own rate (a wrapper whose `step()` steps the optimizer)."""
    lowered = name.lower()
    if _OPTIMIZER_WORD.match(lowered.rsplit("_", 1)[-1]):
        return False
    return any(hint in lowered for hint in SCHEDULER_HINTS)


# `optimizer`, `optimiser`, `optim`, `opt`: the head word of a name that holds an optimizer
_OPTIMIZER_WORD = re.compile(r"opt(im(i[sz]er)?)?s?$")


def builds_network(qual: str) -> bool:
    """Whether a call of `qual` returns a network: a model zoo's factory or a
    `from_pretrained` loader, but not the tokenizers, processors, configs, schedulers,
    pipelines, weight enums, trainers and optimizers the same libraries load or build."""
    if not (qual.startswith(MODEL_FACTORY_PREFIXES) or qual.endswith("from_pretrained")):
        return False
    parts = qual.split(".")
    if any(part.endswith(NON_NETWORK_CLASSES) or part in OPTIMIZER_NAMES for part in parts):
        return False
    named = [part for part in parts if part != "from_pretrained"]
    return not qual.startswith("transformers.") or named[-1][:1].isupper()


def alternation(words: frozenset[str]) -> str:
    """A regular expression's alternation of `words` (for names built around them)."""
    return "|".join(sorted(re.escape(word) for word in words))
