"""The report page in a real headless browser: every section renders, no image is broken.

Uses the distribution's Chromium (``apt-get install chromium``); skipped where no Chromium
binary is found. ``--dump-dom`` gives the page as the browser built it (every ``<img>``
must hold a ``data:`` URI that decodes to a PNG) and ``--screenshot`` must draw a page that
is not blank.
"""

from __future__ import annotations

import base64
import html.parser
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from replaykit import cli

pytestmark = pytest.mark.integration

pytest.importorskip("matplotlib")

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_SECTIONS = ("findings", "episodes", "keys", "actions", "observations", "nonfinite")


def _browser() -> str:
    for name in _BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium binary found (apt-get install chromium)")


def _chromium(browser: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(cwd))  # a profile of its own
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={cwd / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        if tag == "section" and a.get("id"):
            self.ids.append(str(a["id"]))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _inked_share(data: bytes) -> float:
    """Share of the pixels that are not background white."""
    import io

    import matplotlib.image
    import numpy as np

    img = matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]
    return float((np.abs(img - 1.0).max(axis=-1) > 0.05).mean())


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _browser()
    rec = tmp_path / "run.h5"
    policy = "replaykit_envs.diagnostics:nan_policy"
    args = ["record", "CartPole-v1", "--out", str(rec), "--policy", policy, "--steps", "600"]
    assert cli.main([*args, "--snapshot-at", "300", "--no-progress"]) == 0
    out = tmp_path / "report"
    assert cli.main(["report", str(rec), "--out", str(out)]) == 0
    page = (out / "report.html").as_uri()

    dom = _chromium(browser, "--dump-dom", page, cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr
    parsed = _Images()
    parsed.feed(dom.stdout)
    assert set(_SECTIONS) <= set(parsed.ids), parsed.ids
    assert len(parsed.srcs) == len(list(out.glob("*.png"))) >= 5
    for src in parsed.srcs:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64", src[:40]
        w, h = _png_size(base64.b64decode(data))
        assert w > 100 and h > 100

    shot = tmp_path / "shot.png"
    res = _chromium(browser, f"--screenshot={shot}", "--window-size=1100,2600", page, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    data = shot.read_bytes()
    assert _png_size(data) == (1100, 2600)
    assert 0.02 < _inked_share(data) < 0.9  # drawn on, not blank (nor a black error page)
