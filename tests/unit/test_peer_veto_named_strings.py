"""bandit B105 ("hard-coded password") on strings that name things: a constant spelling its
own name (a graph-node tag, torchtitan's `_EP_TOKEN_EXCHANGE`) and the name of a compiler or
profiler pass (llm.c's `pass_name = "enc"`). Real credentials on the same shapes stay."""

from __future__ import annotations

from torchdoctor.agent.checks.linters.peer_veto import PeerVeto
from torchdoctor.agent.models import Evidence

SOURCE = """\
_EP_TOKEN_COUNT_EXCHANGE = "EP_token_count_exchange"
_EP_TOKEN_EXCHANGE_WAIT = "EP_token_exchange_wait"


def kernel_phase(kernel, jit_pass_name):
    if "encoder" in kernel:
        pass_name = "enc"
    if jit_pass_name == "auto_bucketing":
        return pass_name


def connect():
    db_pass = "admin"
    pass_name = "hunter2x9"
    AUTH_TOKEN = "ghp_8f3KqZ1xLw"
    return db_pass, pass_name, AUTH_TOKEN
"""


def _reason(line: int) -> str | None:
    evidence = Evidence(
        source="bandit",
        kind="linter",
        message="B105",
        file="m.py",
        line=line,
        data={"code": "B105"},
    )
    return PeerVeto(lambda _: SOURCE).reason(evidence)


def test_tags_and_pass_names_are_no_credentials() -> None:
    for line in (1, 2, 7, 8):  # tags spelling their names, pass names (assigned, compared)
        assert "names a thing" in (_reason(line) or ""), line


def test_credentials_on_the_same_shapes_stay() -> None:
    assert _reason(13) is None  # `pass` alone: a password
    assert _reason(14) is None  # a pass name with digits: what a password looks like
    assert _reason(15) is None  # a token whose value is not its own name
