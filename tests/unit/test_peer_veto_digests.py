"""detect-secrets' hex strings that the code binds to a digest's name are no credentials."""

from __future__ import annotations

from torchdoctor.agent.checks.linters.peer_veto import PeerVeto
from torchdoctor.agent.models import Evidence

SOURCE = """\
class Archive:
    TORRENT_HASH = "b416e0e7c2f31a1a8d6cb1f0b9c5e7a2d4f6a8c1"
    CHECKSUMS = {
        "weights": "9e3c1b27f04d5a6b8c7d2e1f0a9b8c7d",
    }
    API_KEY_SHA = "77aa10bd02c94f3e8e51b0c6d2a4f9e1"
    refresh = "c0ffee11deadbeef22aa33bb44cc55dd"
"""


def _reason(line: int) -> str | None:
    veto = PeerVeto(lambda _: SOURCE)
    evidence = Evidence(
        source="detect-secrets",
        kind="linter",
        message="possible secret: Hex High Entropy String",
        file="archive.py",
        line=line,
        data={"code": "Hex High Entropy String"},
    )
    return veto.reason(evidence)


def test_hex_bound_to_a_digest_name_is_ruled_out() -> None:
    assert "digest" in (_reason(2) or "")  # a torrent's info hash
    assert "digest" in (_reason(4) or "")  # a value of a checksum table


def test_hex_bound_to_a_secret_or_a_plain_name_stays() -> None:
    assert _reason(6) is None  # a secret's name wins over "sha"
    assert _reason(7) is None  # nothing says what the string is
