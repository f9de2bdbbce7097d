"""`dvc plots show` draws every plot with the network off: its page carries Vega inline (.dvc/plots/)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PLOTS_DIR = REPO / ".dvc" / "plots"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# No request leaves the browser: every proxied URL goes to a closed port and no host name resolves.
OFFLINE = ["--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"]


def test_vendored_vega_matches_manifest_and_the_page_template():
    out = subprocess.run([sys.executable, str(PLOTS_DIR / "vendor.py"), "check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    page = (PLOTS_DIR / "page.html").read_text(encoding="utf-8")
    assert "{plot_divs}" in page
    assert "{scripts}" not in page, "dvc-render puts CDN <script src> tags in the scripts placeholder"
    assert "<script src" not in page


def test_every_plotted_file_is_in_git():
    """A fresh clone has no DVC-cached output (data/cache/...): a plot of one makes `dvc plots show` fail there."""
    files = []
    for plot in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]:
        if isinstance(plot, str):
            files.append(plot)
        else:
            y = next(iter(plot.values()))["y"]
            files += list(y) if isinstance(y, dict) else []
    listed = subprocess.run(["git", "ls-files", "--", *files], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    assert set(files) <= set(listed.stdout.split()), set(files) - set(listed.stdout.split())


def _plot_ids(html: str) -> list[str]:
    """The element ids that dvc-render's Vega divs hand to vegaEmbed, in page order."""
    return re.findall(r"vegaEmbed\('#([^']+)'", html)


def _without_scripts(html: str) -> str:
    return re.sub(r"<script\b.*?</script>", "", html, flags=re.S | re.I)


@pytest.mark.slow
def test_plots_page_renders_every_plot_offline(tmp_path: Path):
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(BROWSERS)}); `make chromium` installs it")
    out_dir = tmp_path / "dvc_plots"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    shown = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out_dir)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "failed" not in shown.stderr.lower(), shown.stdout + shown.stderr
    html = (out_dir / "index.html").read_text(encoding="utf-8")
    assert "<script src" not in html and "cdn.jsdelivr" not in html

    defined = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    series = [next(iter(p)) for p in defined if isinstance(p, dict)]
    images = [p for p in defined if isinstance(p, str)]
    ids = _plot_ids(html)
    assert len(ids) == len(series), (ids, series)
    srcs = re.findall(r'<img src="([^"]+)"', _without_scripts(html))
    assert len(srcs) == len(images), (srcs, images)
    for src in srcs:  # DVC copies the images next to the page
        assert (out_dir / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src

    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", *OFFLINE, "--virtual-time-budget=20000",
                          "--dump-dom", (out_dir / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    body = _without_scripts(dom)
    starts = [body.find(f'id="{i}"') for i in ids]
    assert -1 not in starts, "a plot's div is missing from the rendered page"
    drawn = [i for i, a, b in zip(ids, starts, starts[1:] + [len(body)]) if 'class="marks"' in body[a:b]]
    assert drawn == ids, f"drawn offline: {len(drawn)} of {len(ids)} Vega plots; missing {set(ids) - set(drawn)}"
