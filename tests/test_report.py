"""HTML reports: self-contained pages, checked in a real headless browser (Debian's chromium)."""

import json
import re
import subprocess
from pathlib import Path

import pytest

import headstart
from headstart.cli import main
from tests.conftest import browser, tiny_recipe

# Injected into a copy of the page under test (the report itself carries no script): records script
# and console errors and failed resources, then, once loaded, whether every image decoded.
BROWSER_CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || (e.target && e.target.alt))), true);
for (const level of ['error', 'warn']) {
  const original = console[level];
  console[level] = (...args) => { window.__errors.push(level + ': ' + args.join(' ')); original(...args); };
}
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'browser-check';
  out.textContent = JSON.stringify({images: images.length, broken, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def load_in_browser(page: Path, tmp_path: Path) -> dict:
    checked = tmp_path / f"checked-{page.parent.name}.html"
    checked.write_text(page.read_text().replace("<head>", "<head>" + BROWSER_CHECK, 1))
    result = subprocess.run(
        [
            browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the page did not finish loading: {result.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


@pytest.fixture(scope="module")
def undertrained_run(tmp_path_factory):
    """One short epoch at a tiny learning rate: the model still makes mistakes to show."""
    from tests.conftest import CLASS_COLOURS, write_images

    root = tmp_path_factory.mktemp("report")
    folder = write_images(root / "data", CLASS_COLOURS, per_class=12)
    recipe = tiny_recipe(
        folder, root / "runs", stages=[{"name": "head", "epochs": 1, "freeze": "backbone", "lr": 1e-5}]
    )
    return headstart.train(recipe, quiet=True).run_dir


def test_run_report_is_self_contained_and_complete(undertrained_run):
    assert main(["report", str(undertrained_run)]) == 0
    page = (undertrained_run / "report.html").read_text()
    for heading in (
        "Summary",
        "Curves",
        "Recipe",
        "Model: trainable",
        "Validation",
        "Confusion matrix",
        "Most confident mistakes",
    ):
        assert f"<h2>{heading}" in page, heading
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)  # nothing fetched from elsewhere
    assert "<script" not in page and "predicted:" in page  # the mistakes grid has entries


def test_run_report_renders_in_a_headless_browser(undertrained_run, tmp_path):
    page = headstart.report(undertrained_run)
    check = load_in_browser(page, tmp_path)
    assert check["errors"] == [] and check["broken"] == []
    assert check["images"] >= 3  # curves, confusion matrix, at least one mistake

    # The check itself can fail: a corrupted picture is caught.
    damaged = tmp_path / "damaged" / "report.html"
    damaged.parent.mkdir()
    damaged.write_text(page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    assert load_in_browser(damaged, tmp_path)["broken"]


@pytest.mark.slow
def test_sweep_report_shows_comparison_and_renders(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    result = headstart.sweep(recipe, vary={"head.lr": [0.05, 0.01]}, seeds=1, name="s", quiet=True)
    page = headstart.report(result.path)
    text = page.read_text()
    assert "<h2>Comparison" in text and "head.lr-0.05" in text and "<h2>Curves overlaid" in text
    check = load_in_browser(page, tmp_path)
    assert check["errors"] == [] and check["broken"] == [] and check["images"] >= 3
