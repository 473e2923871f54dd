"""The report in a real browser: headless Chromium loads index.html from disk (file://), runs its
script, and we read the DOM it rendered and look at a screenshot.

Skipped, saying why, where Chromium is not installed ('apt-get install chromium'; .ci/run does it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from conftest import Clips, invoke, missing, private_copy, square_frames, write_video
from test_report import HOSTILE, Page, segments_of

from vidanom.project import Project
from vidanom.report import build_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def _browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.fixture(scope="session")
def chromium() -> None:
    if _browser() is None:
        missing("chromium", "Chromium is not installed: 'apt-get install chromium' (.ci/run does it where it can)")


pytestmark = pytest.mark.usefixtures("chromium")


def browse(page: Path, profile: Path, *args: str, fragment: str = "") -> str:
    """Run headless Chromium on page (file://) with a fresh profile; its stdout."""
    profile.mkdir(parents=True)
    cmd = [str(_browser()), *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri() + fragment]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=profile)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def dom(page: Path, profile: Path, fragment: str = "") -> str:
    """The DOM after the page's script ran (virtual time: media metadata and lazy images get their turn)."""
    return browse(page, profile, "--virtual-time-budget=5000", "--dump-dom", fragment=fragment)


def screenshot(page: Path, profile: Path, png: Path) -> np.ndarray:
    from PIL import Image

    browse(page, profile, "--virtual-time-budget=5000", f"--screenshot={png}", "--window-size=1400,2000")
    return np.asarray(Image.open(png).convert("RGB"))


def local_file(report: Path, ref: str) -> Path:
    """The file in the report a src or href refers to; fails for anything that is not a relative path in it."""
    parts = urlsplit(ref)
    assert not parts.scheme and not parts.netloc, f"{ref} is not a file of the report"
    path = (report / unquote(parts.path)).resolve()
    assert path.is_relative_to(report.resolve()) and path.is_file(), f"{ref} resolves to no file in the report"
    return path


@pytest.fixture(scope="module")
def shown(tmp_path_factory: pytest.TempPathFactory, trained_project_template: Path, clips: Clips) -> tuple[Path, Path]:
    """(project, report): the anomalous clip scored under its name and under a name that is HTML, a normal
    clip scored (no events), and the report with annotated videos."""
    base = tmp_path_factory.mktemp("browser")
    root = private_copy(trained_project_template, base / "proj")
    hostile = base / "videos" / HOSTILE
    hostile.parent.mkdir()
    shutil.copy(clips.anomalous, hostile)
    for video in (clips.anomalous, hostile, clips.normal_a):
        res = invoke("score", video, "--device", "cpu", "-p", root)
        assert res.exit_code == 0, res.output
    out = base / "report"
    res = invoke("report", "-o", out, "--videos", "--device", "cpu", "-p", root)
    assert res.exit_code == 0, res.output
    return root, out


def test_browser_shows_every_event_image_and_video(shown, tmp_path):
    root, out = shown
    page = Page(dom(out / "index.html", tmp_path / "profile"))
    assert page.all("html", **{"data-ready": "1"}), "the page's script did not run"
    rows = [a for a in page.all("tr") if a.get("data-order")]
    assert len(rows) == sum(len(s) for s in segments_of(root).values()) > 0
    images = [a["src"] for a in page.all("img")]
    videos = page.all("video")
    segments = segments_of(root)
    assert len(images) == len(rows) + len(segments)  # a thumbnail per event, a timeline per clip
    assert len(videos) == sum(1 for s in segments.values() if s) >= 2  # a video per clip with events
    for ref in images + [v[k] for v in videos for k in ("src", "poster")]:
        local_file(out, ref)
    assert all(v.get("data-state") == "ready" for v in videos), "a video did not load in the browser"
    for a in page.all("a", **{"class": "play"}):
        assert a["href"].split("#t=")[0] in {v["src"] for v in videos}
        assert float(a["href"].split("#t=")[1]) == pytest.approx(float(a["data-start"]), abs=1e-3)
    buttons = page.all("button")
    assert len(buttons) == 3  # start, duration and peak score sort


def test_browser_shows_a_hostile_clip_name_as_text(shown, tmp_path):
    _, out = shown
    html = dom(out / "index.html", tmp_path / "profile")
    page = Page(html)
    assert HOSTILE in " ".join(page.text)
    assert not page.all("img", src="x") and not any("onerror" in a for _, a in page.elements)


def test_screenshot_of_the_report(shown, tmp_path):
    _, out = shown
    pixels = screenshot(out / "index.html", tmp_path / "profile", tmp_path / "report.png")
    assert pixels.shape == (2000, 1400, 3)
    assert pixels.std() > 20, "the page rendered blank"
    assert (pixels.reshape(-1, 3).min(1) < 40).mean() > 0.001  # dark thumbnails and text, not just background


def test_a_thousand_events_load_in_seconds_and_sort(trained_project_template, tmp_path):
    """A clip of 1000 frames whose stored summary holds 1000 one-frame events: the report decodes the clip
    once for all their images, and the browser loads, sorts (#sort=score) and draws the page in seconds."""
    root = private_copy(trained_project_template, tmp_path / "proj")
    video = write_video(tmp_path / "long.mp4", np.tile(square_frames(50, 4, 20, 1.0, 8)[0], (20, 1, 1, 1)))
    assert invoke("score", video, "--device", "cpu", "-p", root).exit_code == 0
    summary_path = root / "scores" / "long.mp4.json"
    summary = json.loads(summary_path.read_text())
    scores = np.random.default_rng(0).uniform(3, 30, 1000)
    summary["segments"] = [
        {
            "start_frame": i,
            "end_frame": i + 1,
            "start_time": i / 25,
            "end_time": (i + 1) / 25,
            "peak_frame": i,
            "peak_score": float(s),
        }
        for i, s in enumerate(scores)
    ]
    summary_path.write_text(json.dumps(summary))
    out = tmp_path / "report"
    t0 = time.monotonic()
    r = build_report([("long", Project.open(root))], out)
    assert r.events == 1000 and r.made["thumbs"] == 1000
    assert time.monotonic() - t0 < 60
    t0 = time.monotonic()
    page = Page(browse(out / "index.html", tmp_path / "profile", "--dump-dom", fragment="#sort=score"))
    assert time.monotonic() - t0 < 20, "the page of 1000 events took too long to load"
    rows = [a for a in page.all("tr") if a.get("data-order")]
    assert len(rows) == 1000
    assert [float(a["data-score"]) for a in rows] == sorted(scores.tolist(), reverse=True)
    assert os.path.getsize(out / "index.html") < 1_500_000
