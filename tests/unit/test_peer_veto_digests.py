"""detect-secrets' high-entropy strings that the code shows are no credentials: hex bound to a
digest's name, and alphabets (graykode/nlp-tutorial's `'SEPabcdefghijklmnopqrstuvwxyz'`)."""

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
    weights_path = "d8b4687d86cf445a944853fdd6a6b999"
    token_path = "d8b4687d86cf445a944853fdd6a6b999"
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


ALPHABETS = """\
def vocabulary():
    char_arr = [c for c in 'SEPabcdefghijklmnopqrstuvwxyz']
    HEX_DIGITS = "0123456789abcdef"
    SYMBOLS = {"ocr": " !#&'()*+,-./0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    secret_alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    token = "hQ7rT2kX9mB4wZ1pL8sV3nC6yF0dG5aJ"
    pair = ("SEPabcdefghijklmnopqrstuvwxyz", "Zk4qT9wB2mX7rL1pV8sN3cF6yH0dG5aJ")
"""


def _reason_in(source: str, line: int, code: str) -> str | None:
    evidence = Evidence(
        source="detect-secrets",
        kind="linter",
        message=f"possible secret: {code}",
        file="vocab.py",
        line=line,
        data={"code": code},
    )
    return PeerVeto(lambda _: source).reason(evidence)


def test_an_alphabet_is_no_secret() -> None:
    base64 = "Base64 High Entropy String"
    assert "symbol set" in (_reason_in(ALPHABETS, 2, base64) or "")  # a char model's vocabulary
    assert "symbol set" in (_reason_in(ALPHABETS, 3, "Hex High Entropy String") or "")
    assert "symbol set" in (_reason_in(ALPHABETS, 4, base64) or "")  # an OCR charset in a dict


def test_random_strings_and_alphabets_named_as_secrets_stay() -> None:
    base64 = "Base64 High Entropy String"
    assert _reason_in(ALPHABETS, 5, base64) is None  # bound to a secret's name
    assert _reason_in(ALPHABETS, 6, base64) is None  # a random token: no ordered run
    assert _reason_in(ALPHABETS, 7, base64) is None  # an alphabet beside a random string


CAMERAS = """\
def open_stream(pipe):
    # pipe = 'rtsp://username:password@192.168.1.64/1'  # IP camera with login
    # pipe = 'rtsp://<user>:<password>@camera.local/stream'
    # pipe = 'rtsp://admin:Hik12345@192.168.1.64/1'
    return pipe
"""


def test_credentials_that_are_the_field_names_are_a_usage_example() -> None:
    code = "Basic Auth Credentials"
    assert "usage example" in (_reason_in(CAMERAS, 2, code) or "")
    assert "usage example" in (_reason_in(CAMERAS, 3, code) or "")
    assert _reason_in(CAMERAS, 4, code) is None  # a real-looking password stays a finding


DATASETS = """\
class Peptides:
    def __init__(self, root):
        self.url = 'https://example.org/peptides.csv.gz'
        self.version = '701eb743e899f4d793f0e13c8fa5a1b4'  # MD5 hash of the intended dataset file
        # self.version = '9786061a34298a0684150f2e4ff13f47'
        self.release = 'c240c1c15466b5c907c63e180fa8aa89'  # the file we were given
        self.signing = '5a0114bdadc80b94fc7ae974f13ef061'  # sha256 of the api token
"""


def test_hex_that_the_line_comment_calls_a_digest_is_ruled_out() -> None:
    """The LRGB dataset classes bind each file's MD5 to `self.version` and say so in the
    line's comment; the binding name alone says nothing."""
    code = "Hex High Entropy String"
    assert "digest" in (_reason_in(DATASETS, 4, code) or "")


def test_hex_without_a_digest_comment_or_with_a_secret_in_it_stays() -> None:
    code = "Hex High Entropy String"
    assert _reason_in(DATASETS, 5, code) is None  # commented-out code: the comment is the line
    assert _reason_in(DATASETS, 6, code) is None  # the comment does not say what it is
    assert _reason_in(DATASETS, 7, code) is None  # a digest of a secret names the secret


def test_hex_naming_a_file_or_run_is_ruled_out_unless_named_like_a_secret() -> None:
    """ignite's segmentation configs name a tracked run's weights by their artifact id."""
    assert "artifact id" in (_reason(8) or "")
    assert _reason(9) is None  # a token's path: the secret's name wins


ZOO = """\
_MODEL_ZOO = {
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": "137851257/model_final_f6e8b1.pkl",
    "35858791/e2e_mask_rcnn_C4_1x": "35858791/12_2017/e2e_mask_rcnn_C4_1x.yaml.01_45_57.ZgkA7hPB",
}
CREDENTIALS = {
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": "Zk4qT9wB2mX7rL1pV8sN3cF6yH0dG5aJ",
    "api_key_COCO-Detection/mask_rcnn": "137851257/model_final_f6e8b1.pkl",
}
"""


def test_model_zoo_entries_are_ruled_out() -> None:
    for line in (2, 3):  # a config name keyed to its published .pkl / .yaml file
        assert "model zoo" in (_reason_in(ZOO, line, "Base64 High Entropy String") or ""), line


def test_entries_without_a_file_or_with_a_secret_name_stay() -> None:
    assert _reason_in(ZOO, 6, "Base64 High Entropy String") is None  # the value is no path
    assert _reason_in(ZOO, 7, "Base64 High Entropy String") is None  # a key naming a secret


CHECKED = '''\
def test_deterministic(model_hash, grad_hash, refresh_token):
    assert_expected_inline(
        model_hash,
        """135abf5bcdaac7d1a0cbf1b8e0f2bf84ac788ce202f3ec4b23bc8b05d5ee2f1e""",
    )
    assert sha256(blob).hexdigest() == "fe39cc3a984828640c2b9a95458f76cd82046f3147d9ad96"
    assert_expected_inline(refresh_token, "9e3c1b27f04d5a6b8c7d2e1f0a9b8c7d")
    expected = "77aa10bd02c94f3e8e51b0c6d2a4f9e1"
'''


def test_hex_checked_against_a_digest_is_ruled_out() -> None:
    assert "digest" in (_reason_in(CHECKED, 4, "Hex High Entropy String") or "")
    assert "digest" in (_reason_in(CHECKED, 6, "Hex High Entropy String") or "")


def test_hex_beside_a_secret_or_alone_stays() -> None:
    assert _reason_in(CHECKED, 7, "Hex High Entropy String") is None  # checked against a token
    assert _reason_in(CHECKED, 8, "Hex High Entropy String") is None  # nothing says digest


# A dataset test pins its fixture's checksums through pytest's setters (torchgeo's tests): the
# hex literal is the value of the attribute or key the setter names, which says it is a digest.
SETTERS = """\
def dataset(monkeypatch, tmp_path):
    monkeypatch.setattr(Landcover, "md5", "3d6f1b2a9c8e7d5f4a2b1c0d9e8f7a6b")
    monkeypatch.setitem(Landcover.metadata["train"], "md5", "a90e2c4b6d8f1a3c5e7b9d0f2a4c6e8b")
    monkeypatch.setattr(Landcover, "split_md5s", {"val": "5c2e8a1f3b7d9e0c4a6f8b2d1e3c5a7f"})
    monkeypatch.setitem(
        Landcover.metadata["test"],
        "md5",
        "0b9d7f5e3c1a8b6d4f2e0c9a7b5d3f1e",
    )
    monkeypatch.setattr(Landcover, "api_token", "7f3a9c1e5b2d8f4a6c0e2b9d1f3a5c7e")
    monkeypatch.setattr(Landcover, "url", "9e1c3a5f7b2d4f6a8c0e1b3d5f7a9c2e")
    setattr(Landcover, "checksum", "c4e6a8b0d2f4a6c8e0b2d4f6a8c0e2b4")
"""


def test_hex_a_setter_binds_to_a_digest_name_is_ruled_out() -> None:
    code = "Hex High Entropy String"
    for line in (2, 3, 4, 8, 12):
        assert "digest" in (_reason_in(SETTERS, line, code) or ""), line


def test_hex_a_setter_binds_to_a_secret_or_a_plain_name_stays() -> None:
    code = "Hex High Entropy String"
    assert _reason_in(SETTERS, 10, code) is None  # a token set on the class: a secret's name
    assert _reason_in(SETTERS, 11, code) is None  # nothing says the value is a digest
