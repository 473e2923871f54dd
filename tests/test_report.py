"""The HTML report: what it writes, its cache of images, escaping of users' names, and its errors.
(In a real browser: test_report_browser.py.)"""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import Clips, invoke, private_copy

from vidanom import revisit
from vidanom.errors import VidanomError
from vidanom.project import Project
from vidanom.report import build_report
from vidanom.report.build import clock, seconds, span

HOSTILE = "<img src=x onerror=alert(1)>.mp4"


class Page(HTMLParser):
    """The elements of an HTML page as (tag, attributes), and its text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str, **having: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.elements if t == tag and all(a.get(k) == v for k, v in having.items())]


def segments_of(root: Path) -> dict[str, list[dict]]:
    return {p.name[:-5]: json.loads(p.read_text())["segments"] for p in (root / "scores").glob("*.json")}


def report(root: Path, out: Path, **kwargs) -> object:
    """build_report of one project, named as 'vidanom report' names it."""
    return build_report([(root.resolve().name, Project.open(root))], out, device=None, **kwargs)


@pytest.fixture
def hostile(scored: Path, clips: Clips, tmp_path: Path) -> Path:
    """The scored project, with the anomalous clip scored again under a name that is HTML."""
    video = tmp_path / "videos" / HOSTILE
    video.parent.mkdir()
    shutil.copy(clips.anomalous, video)
    res = invoke("score", video, "--device", "cpu", "-p", scored)
    assert res.exit_code == 0, res.output
    return scored


def test_report_shows_totals_model_events_and_clips(scored, tmp_path):
    out = tmp_path / "report"
    res = invoke("report", "-o", out, "--device", "cpu", "-p", scored)
    assert res.exit_code == 0, res.output
    assert f"wrote {out / 'index.html'}" in res.stdout.replace("\n", "")
    page = Page((out / "index.html").read_text())
    segs = segments_of(scored)["anom.mp4"]
    assert segs, "the tiny model finds the anomaly: there is an event to show"
    rows = [a for a in page.all("tr") if a.get("data-order")]
    assert len(rows) == len(segs)
    text = " ".join(page.text)
    version = json.loads((scored / "models" / "v0001" / "version.json").read_text())
    for shown in (
        "clips scored",
        "events",
        "v0001",
        f"{version['threshold']:.2f}",
        f"{100 * version['expected_false_alarms']:.1f}%",
        "default",
        clock(segs[0]["start_time"]),
    ):
        assert shown in text, shown
    thumbs = [a["src"] for a in page.all("img") if "/thumbs/" in a["src"]]
    assert len(thumbs) == len(segs) and all((out / t).is_file() for t in thumbs)
    assert [a["src"] for a in page.all("img", **{"class": "timeline"})] == [
        f"assets/timelines/{p.name}" for p in (out / "assets" / "timelines").iterdir()
    ]
    assert (out / "assets" / "report.js").is_file() and (out / "assets" / "report.css").is_file()
    assert not page.all("video")  # no annotated video made yet, and none asked for


def test_thumbnail_is_the_peak_frame_at_full_resolution_with_its_heatmap(scored, tmp_path):
    from PIL import Image

    out = tmp_path / "report"
    r = report(scored, out)
    assert r.events == len(segments_of(scored)["anom.mp4"]) and r.made["thumbs"] == r.events
    (thumb,) = (out / "assets" / "thumbs").iterdir()
    image = Image.open(thumb)
    assert image.format == "JPEG" and image.size == (64, 48)  # the clip's own size (small: not enlarged)


def test_second_report_reuses_every_image_and_decodes_nothing(scored, tmp_path, monkeypatch):
    out = tmp_path / "report"
    report(scored, out)
    before = {p: p.stat().st_mtime_ns for p in (out / "assets").rglob("*") if p.is_file()}

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a clip again although its images were up to date")

    monkeypatch.setattr(revisit, "revisit", no_decoding)
    r = report(scored, out)
    assert r.made == {}
    assert {p: p.stat().st_mtime_ns for p in (out / "assets").rglob("*") if p.is_file()} == before


def test_rescored_clip_gets_new_images_and_the_old_ones_go(scored, tmp_path):
    out = tmp_path / "report"
    report(scored, out)
    old = set((out / "assets" / "thumbs").iterdir()) | set((out / "assets" / "timelines").iterdir())
    later = (scored / "scores" / "anom.mp4.csv").stat().st_mtime + 10
    for suffix in (".csv", ".json", ".png"):  # as scoring again would leave them
        os.utime(scored / "scores" / f"anom.mp4{suffix}", (later, later))
    r = report(scored, out)
    assert r.made["thumbs"] == r.events and r.made["timelines"] == 1
    new = set((out / "assets" / "thumbs").iterdir()) | set((out / "assets" / "timelines").iterdir())
    assert not old & new and len(new) == len(old)


def test_clip_names_are_shown_as_text_never_as_html(hostile, tmp_path):
    out = tmp_path / "report"
    r = report(hostile, out)
    assert r.clips == 2
    html = (out / "index.html").read_text()
    page = Page(html)
    assert HOSTILE in " ".join(page.text)  # shown as the name it is...
    assert not page.all("img", src="x") and "onerror" not in {k for _, a in page.elements for k in a}
    assert "<img src=x" not in html  # ...and never as markup
    for _, attrs in page.elements:  # asset names are slugs: no user text in a path
        for key in ("src", "href", "poster"):
            assert "<" not in (attrs.get(key) or "") and " " not in (attrs.get(key) or "")


def test_report_with_nothing_scored_is_a_one_line_error(project, tmp_path):
    out = tmp_path / "report"
    res = invoke("report", "-o", out, "-p", project)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: nothing scored in") and len(res.stderr.strip().splitlines()) == 1
    assert "vidanom score" in res.stderr and not out.exists()


def test_report_refuses_a_folder_with_another_index_html(scored, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("<p>mine</p>")
    with pytest.raises(VidanomError, match="not a vidanom report"):
        report(scored, out)
    assert (out / "index.html").read_text() == "<p>mine</p>"


def test_videos_option_makes_annotated_videos_and_links_them(scored, tmp_path):
    out = tmp_path / "report"
    res = invoke("report", "-o", out, "--videos", "--device", "cpu", "-p", scored)
    assert res.exit_code == 0, res.output
    made = scored / "scores" / "anom.mp4.annotated.mp4"  # where 'vidanom annotate' puts it: made once
    assert made.is_file()
    page = Page((out / "index.html").read_text())
    (video,) = page.all("video")
    placed = out / video["src"]
    assert placed.is_file() and placed.read_bytes() == made.read_bytes()
    start = segments_of(scored)["anom.mp4"][0]["start_time"]
    plays = [a for a in page.all("a") if a.get("data-video") == video["id"]]
    assert plays and all(a["href"] == f"{video['src']}#t={start:.3f}" for a in plays[:1])
    assert report(scored, out, videos=True).made == {}  # up to date: not made again


def test_clip_scored_by_another_model_or_gone_is_shown_without_images(scored, tmp_path):
    summary_path = scored / "scores" / "anom.mp4.json"
    summary = json.loads(summary_path.read_text())
    summary["model_version"] = "v0000"
    summary_path.write_text(json.dumps(summary))
    r = report(scored, tmp_path / "report")
    assert r.made.get("thumbs", 0) == 0 and r.events == len(summary["segments"])
    assert any("v0000" in note and "score it again" in note for note in r.notes)
    page = Page((tmp_path / "report" / "index.html").read_text())
    assert "no image" in " ".join(page.text) and "model v0000" in " ".join(page.text)


def test_fleet_report_shows_each_camera(scored, tmp_path):
    other = private_copy(scored, tmp_path / "other")
    out = tmp_path / "fleet"
    r = build_report([("north gate", Project.open(scored)), ("yard", Project.open(other))], out)
    assert r.cameras == 2 and r.clips == 2 and r.events == 2 * len(segments_of(scored)["anom.mp4"])
    html = (out / "index.html").read_text()
    page = Page(html)
    assert '<th scope="col">camera</th>' in html
    text = " ".join(page.text)
    assert "2 cameras" in text and "north gate" in text and "yard" in text
    assert len({a["id"] for a in page.all("section", **{"class": "clip"})}) == 2


def test_times_read_as_clock_lengths_and_durations():
    assert clock(0.96) == "0:00.96" and clock(61.5) == "1:01.50" and clock(3723.04) == "1:02:03.04"
    assert span(7.66) == "7.7 s" and span(90) == "1.5 min" and span(5400) == "1.50 h"
    assert seconds(0.04) == "0.04 s" and seconds(75.5) == "1:15.50"
