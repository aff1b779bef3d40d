"""The review page in a real browser: Debian's headless Chromium, driven by Playwright, against a
real `torchdoctor serve` on 127.0.0.1.

One server and one browser for the module. The user signs in with an API key, submits the
bundled buggy example (a folder, with a run and the quick probes), watches the twelve points
complete, approves a verified fix, opens a finding, sees the run's plots and data-flow diagram,
and downloads a patch that applies to the code as submitted, a SARIF report that validates
against the SARIF 2.1.0 schema and a markdown report listing every finding. A file with markup
in its name must show as text and run nothing. A second tenant's key sees none of it, then
submits an archive of its own with a run and rejects the verified fix it is offered: the audit
resumes with the rejection and writes nothing; a model's unverified hypothesis (added to the
report on its way to the page) shows apart from the findings, as text. axe-core (Deque's
accessibility engine) checks the page against WCAG 2 A/AA (colour contrast included) at the
approval step, with a finding open and with the hypotheses shown. Each step's screenshot is
saved under the test's tmp dir and checked not blank (pixel variance).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.api.server import Server
from torchdoctor.agent.fixes.codemods import fixable_rules

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
ImageStat = pytest.importorskip("PIL.ImageStat", reason="pillow is not installed")
Image = pytest.importorskip("PIL.Image", reason="pillow is not installed")
axe_playwright = pytest.importorskip(
    "axe_playwright_python.sync_playwright", reason="axe-playwright-python is not installed"
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "train_buggy.py"
SMALL = REPO / "examples" / "train_small.py"
SARIF_SCHEMA = REPO / "tests" / "schemas" / "sarif-schema-2.1.0.json"
WCAG = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers' /dev/shm is small
]
# A real file name can carry markup: it must reach the page as text and run nothing.
HOSTILE_NAME = "x<img src=x onerror=window.__pwned=1>.py"
HOSTILE_CODE = (
    "import torch\n\nmodel = torch.nn.Linear(2, 2)\nout = model.forward(torch.randn(1, 2))\n"
)
AUDIT_S = 600_000
OTHER_FIXES = fixable_rules() - {"zero-grad-missing"}
NUMBERED = re.compile(r"^[> ] *\d+ \| ")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("review-home")
    running = Server(
        home,
        f"sqlite:///{home / 'api.sqlite'}",
        {"TORCHDOCTOR_RATE_LIMIT_PER_MINUTE": "2000", "TORCHDOCTOR_AUDIT_WORKERS": "1"},
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/apt-packages.txt lists it)")
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


class Shots:
    """Screenshots of each step, saved and checked not blank."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder, self.count = page, folder, 0
        folder.mkdir(exist_ok=True)

    def take(self, name: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        with Image.open(path) as image:
            spread = ImageStat.Stat(image.convert("L")).stddev[0]
        assert spread > 8.0, f"{path.name} looks blank (grey-level spread {spread:.1f})"
        return path


def accessible(page: Any, where: str) -> None:
    """No WCAG 2.1 A/AA violation that axe-core finds on the page as it is now (contrast is
    computed from the rendered colours of every visible text)."""
    results = axe_playwright.Axe().run(page, options=WCAG)
    problems = [
        f"{v['id']}: {v['help']} at {[n['target'] for n in v['nodes']][:4]} "
        f"({v['nodes'][0].get('failureSummary', '')})"
        for v in results.response["violations"]
    ]
    assert problems == [], f"{where}: " + "\n".join(problems)
    passed = {rule["id"] for rule in results.response["passes"]}
    assert "color-contrast" in passed, f"{where}: axe checked no text contrast"


def fetched_text(page: Any, button: str) -> str:
    """Click a download button; the downloaded file's text."""
    with page.expect_download() as fetched:
        page.get_by_role("button", name=button, exact=True).click()
    return Path(fetched.value.path()).read_text(encoding="utf-8")


def api_json(page: Any, path: str) -> Any:
    """GET a path of the API with the key the page signed in with."""
    return page.evaluate(
        """async (path) => (await fetch(path, {headers: {Authorization:
        'Bearer ' + sessionStorage.getItem('torchdoctor.key')}})).json()""",
        path,
    )


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url)
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#workspace").wait_for(state="visible")


HOSTILE_CLAIM = "<img src=x onerror=window.__pwned=1> leaks the target"
CLAIM = {
    "id": "H-3f2a",
    "rule": "llm-target-leak",
    "checkpoint": 3,
    "severity": "high",
    "title": HOSTILE_CLAIM,
    "file": HOSTILE_NAME,
    "line": 3,
    "end_line": 3,
    "explanation": "<script>window.__pwned=1</script>",
    "source": "llm:<b>stub</b>",
}


def with_hypotheses(route: Any) -> None:
    """The report the server sent, with one unverified hypothesis added."""
    sent = route.fetch()
    report = sent.json()
    report["hypotheses"] = [CLAIM]
    route.fulfill(response=sent, json=report)


def test_review_page_end_to_end(server: Server, browser: Any, tmp_path: Path) -> None:
    code = tmp_path / "project"
    code.mkdir()
    shutil.copy(EXAMPLE, code / "train_buggy.py")
    (code / HOSTILE_NAME).write_text(HOSTILE_CODE)
    key = server.key("acme")

    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    shots = Shots(page, tmp_path / "screenshots")

    response = page.goto(server.url)
    assert response is not None and response.ok
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-eval" not in policy
    shots.take("sign-in")
    page.get_by_label("API key").fill("td_not-a-key")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("This API key is unknown or revoked.").wait_for()
    sign_in(page, server.url, key)

    page.locator("#folder").set_input_files(str(code))
    page.get_by_label("Run in the sandbox (optional)").fill("python train_buggy.py")
    page.get_by_label("Steps per run").fill("6")
    # The quick probes: the page is about the review, not determinism or export (5.1, 7.1).
    page.get_by_label("Probes").select_option("cheap")
    # One fix to verify keeps the test short: every other fixable rule is skipped.
    page.get_by_label("Skip these rules (optional)").fill(" ".join(sorted(OTHER_FIXES)))
    page.get_by_role("button", name="Start the audit").click()
    page.locator("#audit-state").wait_for(state="visible")
    audit_id = page.locator("#audit-id").inner_text()
    assert len(audit_id) == 32, audit_id

    done_points = page.locator('#board [data-point][data-done="true"]')
    done_points.first.wait_for(timeout=AUDIT_S)
    shots.take("points-completing")
    page.locator("#approval").wait_for(state="visible", timeout=AUDIT_S)
    assert done_points.count() == 12
    assert page.locator("#audit-state").inner_text() == "waiting-approval"
    shots.take("approval")

    change = page.locator("#changes article").filter(has_text="zero-grad-missing").first
    chosen = change.get_attribute("data-finding")
    assert chosen is not None
    assert change.locator("td.add").filter(has_text="zero_grad").count() >= 1
    change.get_by_role("button", name="Approve").click()
    change.get_by_label("Comment").fill("checked in the browser")
    accessible(page, "approval step")
    page.get_by_role("button", name="Send decisions").click()
    page.locator("#audit-state.done").wait_for(timeout=AUDIT_S)

    page.locator(f'#findings [data-open="{chosen}"]').wait_for()
    page.get_by_label("Severity").select_option("high")
    shown = page.locator("#findings tbody tr")
    assert shown.count() >= 1
    severities = {row.locator(".sev").text_content() for row in shown.all()}
    assert severities == {"high"}, "the severity filter let other severities through"
    page.get_by_label("Severity").select_option("")
    page.locator(f'#findings [data-open="{chosen}"]').focus()
    page.keyboard.press("Enter")
    detail = page.locator("#finding")
    detail.wait_for(state="visible")
    assert "zero-grad-missing" in detail.inner_text()
    excerpt = detail.locator("pre.excerpt").first.inner_text()
    assert all(NUMBERED.match(line) for line in excerpt.splitlines()), excerpt
    assert "About this rule" in detail.inner_text()
    shots.take("finding")
    accessible(page, "a finding open")

    page.get_by_label("Command or question").fill(f"show {chosen}")
    page.get_by_role("button", name="Send", exact=True).click()
    answer = page.locator("#chat-log li.td").filter(has_text=f"{chosen} · high").first
    answer.wait_for(timeout=60_000)
    assert "zero-grad-missing" in answer.inner_text() and answer.locator("pre").count() >= 1

    hostile = page.locator("#findings code").filter(has_text=HOSTILE_NAME)
    assert hostile.count() >= 1, "the hostile file's finding is not listed as text"
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#findings img").count() == 0
    hostile_row = page.locator("#findings tbody tr").filter(
        has=page.locator("code", has_text=HOSTILE_NAME)
    )
    hostile_row.get_by_role("button").click()
    detail.locator("dd code").filter(has_text=HOSTILE_NAME).wait_for()
    detail.get_by_label("Mark as").select_option("needs-human")
    detail.get_by_label("Reason (kept in ISSUES.md)").fill("generated file, <b>owner</b> decides")
    detail.get_by_role("button", name="Save").click()
    hostile_row.filter(has_text="needs-human").wait_for(timeout=90_000)  # slow under a busy CI

    page.locator('#runs img[data-plot="loss"]').wait_for(timeout=30_000)
    page.locator("#runs img[data-diagram]").first.wait_for(timeout=60_000)
    assert page.evaluate(
        "[...document.querySelectorAll('#runs img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.locator("#coverage tbody tr").count() >= 40
    page.locator("#runs").scroll_into_view_if_needed()
    shots.take("runs-and-coverage")

    with page.expect_download() as fetched:
        page.get_by_role("button", name="Patch").click()
    patch = tmp_path / "audit.patch"
    fetched.value.save_as(patch)
    assert "zero_grad" in patch.read_text()
    subprocess.run(["git", "apply", "--check", str(patch)], cwd=code, check=True)
    report = json.loads(fetched_text(page, "Report (JSON)"))
    ids = {f["id"] for f in report["findings"]}
    (run,) = report["provenance"]["extra"]["runs"]
    assert any(note.startswith("--probes cheap skipped") for note in run["notes"]), run["notes"]
    assert chosen in ids
    sarif = json.loads(fetched_text(page, "SARIF"))
    jsonschema.validate(sarif, json.loads(SARIF_SCHEMA.read_text()))
    results = sarif["runs"][0]["results"]
    assert sarif["runs"][0]["properties"]["unverifiedHypotheses"] == []
    assert sorted(r["partialFingerprints"]["torchdoctor/v1"] for r in results) == sorted(ids)
    markdown = fetched_text(page, "Markdown")
    assert markdown.startswith("# torchdoctor audit report")
    missing = [i for i in ids if f"`{i}`" not in markdown]
    assert missing == [], f"findings not in the markdown report: {missing}"
    assert errors == [], errors
    context.close()

    other = browser.new_context(viewport={"width": 1400, "height": 800})
    stranger = other.new_page()
    # Hypotheses come only from a model: added to the server's real report on its way to the
    # page, with markup in every text the model writes.
    stranger.route("**/v1/audits/*/report", with_hypotheses)
    sign_in(stranger, server.url, server.key("globex"))
    stranger.locator("#audit-list-empty").wait_for(state="visible")
    assert stranger.locator("#audit-list li").count() == 0
    status = stranger.evaluate(
        """async (id) => (await fetch('/v1/audits/' + id, {headers: {Authorization:
        'Bearer ' + sessionStorage.getItem('torchdoctor.key')}})).status""",
        audit_id,
    )
    assert status == 404
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        packed.writestr(HOSTILE_NAME, HOSTILE_CODE)
        packed.write(SMALL, SMALL.name)
    stranger.locator("#archive").set_input_files(str(archive))
    stranger.get_by_label("Run in the sandbox (optional)").fill(f"python {SMALL.name}")
    stranger.get_by_label("Steps per run").fill("2")
    stranger.get_by_label("Probes").select_option("cheap")
    stranger.get_by_role("button", name="Start the audit").click()
    stranger.locator("#audit-state").wait_for(state="visible")
    theirs = stranger.locator("#audit-id").inner_text()
    stranger.locator("#approval").wait_for(state="visible", timeout=AUDIT_S)
    assert stranger.locator("#audit-list li").count() == 1
    offered = stranger.locator("#changes article").first
    rejected = offered.get_attribute("data-finding")
    offered.get_by_role("button", name="Reject").click()
    assert offered.get_by_role("button", name="Reject").get_attribute("aria-pressed") == "true"
    offered.get_by_label("Comment").fill("not this one")
    stranger.get_by_role("button", name="Send decisions").click()
    stranger.locator("#audit-state.done").wait_for(timeout=AUDIT_S)
    answer = api_json(stranger, f"/v1/audits/{theirs}/approvals")["answer"]
    assert [(d["finding_id"], d["approve"]) for d in answer["decisions"]] == [(rejected, False)]
    row = stranger.locator("#findings tbody tr").filter(
        has=stranger.locator(f'[data-open="{rejected}"]')
    )
    assert row.locator("td").last.inner_text() == "verified"  # verified, not written (fixed)
    assert fetched_text(stranger, "Patch") == "", "a rejected fix was written"
    tree = server.home / "audits" / theirs / "src"
    assert (tree / SMALL.name).read_text() == SMALL.read_text()
    stranger.locator("#findings code").filter(has_text=HOSTILE_NAME).first.wait_for()
    claims = stranger.locator("#hypotheses tbody tr")
    claims.first.wait_for()
    assert claims.count() == 1 and stranger.locator("#hypotheses img").count() == 0
    assert HOSTILE_CLAIM in claims.inner_text() and f"{HOSTILE_NAME}:3" in claims.inner_text()
    assert stranger.locator(f'#findings [data-open="{CLAIM["id"]}"]').count() == 0
    assert stranger.evaluate("window.__pwned") is None
    accessible(stranger, "hypotheses shown")
    Shots(stranger, tmp_path / "screenshots-other").take("other-tenant")
    other.close()
