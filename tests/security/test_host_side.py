"""Host-side attacks (tests/security/host_attacks.py): torchdoctor reads, writes and runs git
in a hostile repository on the host; each attack must find nothing escaped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.security.host_attacks import HOST_ATTACKS, HostScene


@pytest.mark.parametrize("attack", list(HOST_ATTACKS.values()), ids=list(HOST_ATTACKS))
def test_host_attack_is_held(attack: Callable[[HostScene], list[str]], tmp_path: Path) -> None:
    assert attack(HostScene(tmp_path)) == []
