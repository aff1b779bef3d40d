"""Peer findings the code around the line rules out: bandit B301 on the objects processes of
one job exchange through a tensor (demucs' `share`, the `all_gather` of pickled objects) and
TorchFix TOR003 on a checkpoint whose `**kwargs` carry `use_reentrant` (k-diffusion)."""

from __future__ import annotations

from torchdoctor.agent.checks.linters.peer_veto import PeerVeto
from torchdoctor.agent.models import Evidence

DISTRIBUTED = """\
import pickle
import numpy as np
import torch


def share(obj, src, rank):
    size = torch.empty(1, dtype=torch.long)
    if rank == src:
        payload = pickle.dumps(obj)
        size[0] = len(payload)
    torch.distributed.broadcast(size, src=src)
    if rank == src:
        buffer = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())
    else:
        buffer = torch.empty(int(size[0]), dtype=torch.uint8)
    torch.distributed.broadcast(buffer, src=src)
    if rank != src:
        obj = pickle.loads(buffer.numpy().tobytes())
    return obj


def gather(data, world):
    blob = pickle.dumps(data)
    local = torch.ByteTensor(list(blob))
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local)
    out = []
    for part in parts:
        raw = part.cpu().numpy().tobytes()
        out.append(pickle.loads(raw))
    return out


def read_cache(path):
    with open(path, "rb") as f:
        return pickle.loads(f.read())


def received(sock):
    raw = sock.recv(1 << 20)
    return pickle.loads(np.frombuffer(raw, dtype=np.uint8).tobytes())
"""

CHECKPOINTING = """\
import torch.utils.checkpoint


def checkpoint(function, *args, **kwargs):
    kwargs.setdefault("use_reentrant", True)
    return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)


def checkpoint_subscript(function, *args, **options):
    options["use_reentrant"] = False
    return torch.utils.checkpoint.checkpoint(function, *args, **options)


def checkpoint_passthrough(function, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)


def checkpoint_plain(function, x):
    return torch.utils.checkpoint.checkpoint(function, x)
"""


def _reason(source: str, tool: str, code: str, line: int) -> str | None:
    evidence = Evidence(
        source=tool,
        kind="linter",
        message=code,
        file="m.py",
        line=line,
        data={"code": code},
    )
    return PeerVeto(lambda _: source).reason(evidence)


def test_objects_exchanged_through_a_tensor_are_ruled_out() -> None:
    assert "exchanged" in (_reason(DISTRIBUTED, "bandit", "B301", 18) or "")  # broadcast
    assert "exchanged" in (_reason(DISTRIBUTED, "bandit", "B301", 30) or "")  # all_gather


def test_bytes_from_a_file_or_a_socket_stay() -> None:
    assert _reason(DISTRIBUTED, "bandit", "B301", 36) is None  # a file's bytes
    assert _reason(DISTRIBUTED, "bandit", "B301", 41) is None  # nothing pickled here


def test_use_reentrant_carried_by_the_unpacked_dict_is_ruled_out() -> None:
    assert "use_reentrant" in (_reason(CHECKPOINTING, "torchfix", "TOR003", 6) or "")
    assert "use_reentrant" in (_reason(CHECKPOINTING, "torchfix", "TOR003", 11) or "")


def test_kwargs_passed_through_or_no_kwargs_stay() -> None:
    assert _reason(CHECKPOINTING, "torchfix", "TOR003", 15) is None  # the caller decides
    assert _reason(CHECKPOINTING, "torchfix", "TOR003", 19) is None


KEYWORDS = """\
class LmdbBackend:
    def __init__(self, db_paths, client_keys='default', readonly=True):
        self.client_keys = client_keys


api_key = "<YOUR_API_KEY>"
secret_key = "${SECRET_KEY}"
password = "hunter2hunter2"
db_password = "default-but-real-9f2c"
"""


def test_placeholder_keyword_values_are_ruled_out() -> None:
    for line in (2, 6, 7):
        assert "placeholder" in (_reason(KEYWORDS, "detect-secrets", "Secret Keyword", line) or "")


def test_real_looking_keyword_values_stay() -> None:
    assert _reason(KEYWORDS, "detect-secrets", "Secret Keyword", 8) is None
    assert _reason(KEYWORDS, "detect-secrets", "Secret Keyword", 9) is None


LOADING = """\
import torch


def load_model(fp, device):
    kwargs = {"weights_only": True} if torch.__version__ >= "1.13" else {}
    return torch.load(fp, map_location=device, **kwargs)


def load_any(fp, **load_kwargs):
    return torch.load(fp, **load_kwargs)
"""


def test_weights_only_carried_by_the_unpacked_dict_is_ruled_out() -> None:
    for tool, code in (("bandit", "B614"), ("torchfix", "TOR102")):
        assert "weights_only" in (_reason(LOADING, tool, code, 6) or "")


def test_load_kwargs_from_the_caller_stay() -> None:
    for tool, code in (("bandit", "B614"), ("torchfix", "TOR102")):
        assert _reason(LOADING, tool, code, 10) is None


ANNOTATED = """\
from typing import Any, Dict, Union


def train(model_path=None, trial: Union["optuna.Trial", Dict[str, Any]] = None):
    return optuna.create_study() if trial is None else trial
"""

SETUP = """\
from setuptools import setup

with open("pkg/version.py") as version_file:
    exec(version_file.read())

setup(name="pkg", version=__version__)
"""


def _undefined(source: str, name: str, line: int) -> str | None:
    evidence = Evidence(
        source="ruff",
        kind="linter",
        message=f"Undefined name `{name}`",
        file="m.py",
        line=line,
        data={"code": "F821"},
    )
    return PeerVeto(lambda _: source).reason(evidence)


def test_undefined_names_never_run_are_ruled_out() -> None:
    assert "string annotation" in (_undefined(ANNOTATED, "optuna", 4) or "")
    assert "exec" in (_undefined(SETUP, "__version__", 6) or "")


def test_undefined_names_that_run_stay() -> None:
    assert _undefined(ANNOTATED, "optuna", 5) is None


TOKENIZER = """\
class SentencePieceTokenizer:
    def __init__(
        self,
        vocab_file,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
    ):
        self.vocab_file = vocab_file


def connect(host, user="admin", password="hunter2hunter2"):
    return host, user, password
"""

DOWNLOADS = """\
FILES = {
    "Set5": {
        "Set5.zip": "1RtyIeUFTyW8u7oa4z7a0lSzT3T1FwZE9",
    },
    "weights": {
        "ESRGAN_x4-150ff491.pth":
        "1swaV5iBMFfg-DL6ZyiARztbhutDCWXMM",
    },
}
CREDENTIALS = {"api_key.txt": "Zk4qT9wB2mX7rL1pV8sN3cF6yH0dG5aJ"}
SERVICE = {"token": "Zk4qT9wB2mX7rL1pV8sN3cF6yH0dG5aJ"}
MODEL_ZOO = [
    ("Sehwag2020Hydra", {"gdrive_id": "1pi8GHwAVkxVH41hEnf0IAJb_7y-Q8a2Y"}),
    ("Hosted", {"file_id": "15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ", "api_id": "Zk4qT9wB2mX7rL1pV8sN3"}),
]
"""


def test_tokenizer_token_defaults_are_ruled_out() -> None:
    assert "special tokens" in (_reason(TOKENIZER, "bandit", "B107", 2) or "")


def test_password_defaults_stay() -> None:
    assert _reason(TOKENIZER, "bandit", "B107", 12) is None


def test_file_ids_of_a_download_table_are_ruled_out() -> None:
    code = "Base64 High Entropy String"
    assert "download table" in (_reason(DOWNLOADS, "detect-secrets", code, 3) or "")
    assert "download table" in (_reason(DOWNLOADS, "detect-secrets", code, 7) or "")


def test_strings_named_like_secrets_stay() -> None:
    code = "Base64 High Entropy String"
    assert _reason(DOWNLOADS, "detect-secrets", code, 10) is None
    assert _reason(DOWNLOADS, "detect-secrets", code, 11) is None


def test_file_ids_of_a_model_zoo_are_ruled_out_unless_beside_another_key() -> None:
    """robustbench's model zoo names each checkpoint's Google Drive file by `gdrive_id`; a
    line that also holds a value of another key keeps its finding."""
    code = "Base64 High Entropy String"
    assert "download table" in (_reason(DOWNLOADS, "detect-secrets", code, 13) or "")
    assert _reason(DOWNLOADS, "detect-secrets", code, 14) is None


LOADERS = """\
import torch
from torch.utils.data import DataLoader, TensorDataset


def get_loaders(tensors, args):
    train_set, valid_set = TensorDataset(*tensors["train"]), TensorDataset(*tensors["valid"])
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    valid_loader = DataLoader(valid_set, batch_size=args.batch_size)
    inline = DataLoader(TensorDataset(tensors["x"], tensors["y"]), batch_size=8)
    return train_loader, valid_loader, inline


def image_loaders(root, transform, tensors):
    images = torchvision.datasets.ImageFolder(root, transform)
    loader = DataLoader(images, batch_size=64, shuffle=True)
    mixed = TensorDataset(tensors["x"])
    if transform is not None:
        mixed = AugmentedDataset(mixed, transform)
    other = DataLoader(mixed, batch_size=64)
    return loader, other
"""


def test_loaders_over_in_memory_tensor_datasets_are_ruled_out() -> None:
    for line in (7, 8, 9):
        assert "TensorDataset" in (_reason(LOADERS, "torchfix", "TOR401", line) or "")


def test_loaders_over_files_or_rebound_datasets_stay() -> None:
    assert _reason(LOADERS, "torchfix", "TOR401", 15) is None  # images decoded per batch
    assert _reason(LOADERS, "torchfix", "TOR401", 19) is None  # rebound to an augmenting wrapper


ORTHOGONAL = """\
import torch

TORCH_GE_1_8_0 = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (1, 8)


def chunk(block):
    if TORCH_GE_1_8_0:
        q, r = torch.linalg.qr(block, mode="reduced")
    else:
        q, r = torch.qr(block, some=True)
    return q


def chunk_unchecked(block):
    q, r = torch.qr(block, some=True)
    return q


def cpu_context(bf16):
    if torch.cuda.is_available():
        return torch.amp.autocast("cuda", enabled=False)
    else:
        return torch.cpu.amp.autocast(enabled=bf16)
"""


def _deprecated(line: int, name: str) -> str | None:
    evidence = Evidence(
        source="torchfix",
        kind="linter",
        message=f"Use of deprecated function {name}",
        file="m.py",
        line=line,
        data={"code": "TOR101"},
    )
    return PeerVeto(lambda _: ORTHOGONAL).reason(evidence)


def test_deprecated_call_on_the_fallback_branch_of_a_version_check_is_ruled_out() -> None:
    """performer-pytorch's orthogonal features: torch.qr only where torch.linalg.qr is
    missing, as deprecated-torch-api reads it."""
    assert "compatibility check" in (_deprecated(10, "torch.qr") or "")


def test_deprecated_call_without_the_replacement_beside_it_stays() -> None:
    assert _deprecated(15, "torch.qr") is None  # no check at all
    assert _deprecated(23, "torch.cpu.amp.autocast") is None  # a device branch: autocast('cuda')


SERVING = """\
import openai

openai.api_key = "EMPTY"  # the local server checks no key
os.environ["OPENAI_API_KEY"] = "empty"
#     "api_key": "sk-******",
#     "api_key": "sk-9f2cQ7wL1pV8sN3cF6yH0dG5",
tokenizer = AutoTokenizer.from_pretrained(path, eos_token="<eod>", pad_token="<pad>")
resize(special_tokens_dict=dict(pad_token="[PAD]"), tokenizer=tokenizer)
client = connect(host, password="hunter2hunter2")
"""


def test_empty_or_masked_api_keys_are_ruled_out() -> None:
    for line in (3, 4, 5):
        assert "placeholder" in (_reason(SERVING, "detect-secrets", "Secret Keyword", line) or "")


def test_a_real_looking_key_in_a_comment_stays() -> None:
    assert _reason(SERVING, "detect-secrets", "Secret Keyword", 6) is None


def test_special_tokens_given_by_keyword_are_ruled_out() -> None:
    for line in (7, 8):
        assert "special token" in (_reason(SERVING, "bandit", "B106", line) or "")


def test_a_password_given_by_keyword_stays() -> None:
    assert _reason(SERVING, "bandit", "B106", 9) is None


COPIES = """\
import pickle
from pickle import dumps, loads


class FragmentLoader:
    def reinit(self):
        self.fragment = loads(dumps(self.fragment))
        self.state = pickle.loads(pickle.dumps(self.state, protocol=4))
        self.cache = pickle.loads(self.read_blob())
        self.both = loads(dumps(self.fragment)), pickle.loads(self.read_blob())
"""


def test_a_deep_copy_through_pickle_is_ruled_out() -> None:
    assert "deep copy" in (_reason(COPIES, "bandit", "B301", 7) or "")
    assert "deep copy" in (_reason(COPIES, "bandit", "B301", 8) or "")


def test_bytes_pickled_elsewhere_stay() -> None:
    assert _reason(COPIES, "bandit", "B301", 9) is None  # bytes read from somewhere
    assert _reason(COPIES, "bandit", "B301", 10) is None  # one unpickling reads outside bytes


# minimind's trainers build a loader only to count its batches for the schedule, then iterate a
# resumable loader made per epoch: the counted one never loads a batch.
COUNTED = """\
from torch.utils.data import DataLoader


def main(args, train_ds, train_sampler, collate_fn):
    loader_for_count = DataLoader(train_ds, batch_size=args.batch_size, sampler=train_sampler)
    total_steps = len(loader_for_count) * args.epochs
    loader = DataLoader(train_ds, batch_size=args.batch_size, collate_fn=collate_fn)
    for batch in loader:
        print(batch, total_steps)
    probe = DataLoader(train_ds, batch_size=args.batch_size)
    steps = len(probe)
    first = next(iter(probe))
    return steps, first
"""


def test_a_loader_only_counted_is_ruled_out() -> None:
    assert "only counted" in (_reason(COUNTED, "torchfix", "TOR401", 5) or "")


def test_a_loader_iterated_or_also_iterated_stays() -> None:
    assert _reason(COUNTED, "torchfix", "TOR401", 7) is None  # the training loader
    assert _reason(COUNTED, "torchfix", "TOR401", 10) is None  # counted, then iterated
