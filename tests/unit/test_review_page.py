"""The review page's serving, without a browser: the page and its assets come from the package
with the security headers, name no other origin (it works offline), and the routes it reads
(checklist, rule documentation, runs) answer per tenant with a key only."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest
from fastapi.testclient import TestClient

from torchdoctor.api.app import create_app
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.engine import migrate, open_engine
from torchdoctor.api.web.pages import STATIC

ASSETS = [
    "/",
    "/static/app.js",
    "/static/app.css",
    "/static/vendor/mermaid.tiny.js",
    "/static/favicon.svg",
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    settings = ApiSettings(home=tmp_path_factory.mktemp("review-page"))
    migrate(open_engine(settings.url))
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def key(client: TestClient) -> dict[str, str]:
    _, secret = client.app.state.store.create_key("acme")  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("path", ASSETS)
def test_page_and_assets_carry_the_security_headers(client: TestClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-eval" not in policy and "script-src 'self' 'unsafe-inline'" not in policy
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"


def test_the_page_names_no_other_origin_and_no_inline_script() -> None:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/app.js" defer>']
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "http://" not in script and "https://" not in script
    assert (STATIC / "vendor" / "mermaid.LICENSE").is_file()


def _declared(rel: PurePosixPath, pattern: str) -> bool:
    parts = PurePosixPath(pattern).parts
    return len(parts) == len(rel.parts) and all(map(fnmatch, rel.parts, parts))


def test_every_static_file_is_package_data() -> None:
    """The wheel carries every file the page loads (setuptools package-data globs)."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["torchdoctor.api.web"]
    files = [p.relative_to(STATIC.parent) for p in STATIC.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for rel in files:
        posix = PurePosixPath(rel.as_posix())
        assert any(_declared(posix, pattern) for pattern in patterns), rel


def test_review_routes_need_a_key(client: TestClient) -> None:
    for path in ("/v1/checklist", "/v1/rules/zero-grad-missing", "/v1/audits/x/runs"):
        assert client.get(path).status_code == 401


def test_checklist_and_rule_documentation(client: TestClient, key: dict[str, str]) -> None:
    checklist = client.get("/v1/checklist", headers=key).json()
    assert [len(checklist[k]) for k in ("phases", "points", "items")] == [5, 12, 50]
    french = client.get("/v1/checklist?lang=fr", headers=key).json()
    assert french["points"][0]["title"] != checklist["points"][0]["title"]
    rule = client.get("/v1/rules/zero-grad-missing", headers=key).json()
    assert rule["point"] and rule["items"] and "Why" in rule["doc"]
    missing = client.get("/v1/rules/no-such-rule", headers=key)
    assert missing.status_code == 404 and missing.json() == {"detail": "no rule no-such-rule"}


def test_runs_of_another_tenants_audit_are_not_found(
    client: TestClient, key: dict[str, str]
) -> None:
    assert client.get("/v1/audits/0123/runs", headers=key).status_code == 404
    assert client.get("/v1/audits/0123/runs/0/loss.svg", headers=key).status_code == 404
    assert client.get("/v1/audits/0123/runs/0/other.svg", headers=key).status_code == 422
