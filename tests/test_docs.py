"""The README's Python example runs as written (on tiny clips, with the tiny config as the default)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Clips, tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    """The code block of the README's 'Use from Python' section."""
    section = README.read_text().split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_python_example_runs(
    tmp_path: Path, clips: Clips, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from vidanom import project

    monkeypatch.chdir(tmp_path)
    shutil.copytree(clips.folder, tmp_path / "normal")
    shutil.copy(clips.anomalous, tmp_path / "new_clip.mp4")
    monkeypatch.setattr(project, "ProjectConfig", tiny_config)  # Project.init's default: small and quick
    exec(compile(python_example(), str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "v0001" in out and "new_clip.mp4" in out and "anomalous at" in out
    assert (tmp_path / "cam1" / "scores" / "new_clip.mp4.csv").exists()


def test_the_version_is_written_in_one_place():
    try:
        import tomllib
    except ImportError:  # Python 3.10: the test extra brings tomli
        import tomli as tomllib

    import vidanom

    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "vidanom.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", vidanom.__version__)
