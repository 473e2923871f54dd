"""A fleet manifest: the cameras, each with its project and its footage, in one TOML file.

    [cameras.gate]
    project = "projects/gate"                  # its project folder (fleet train creates a missing one)
    train = ["footage/gate/normal/*.mp4"]      # videos to train on: paths or globs (a string or a list)
    score = ["footage/gate/2026-12-01/*.mp4"]  # videos to score
    scene = "default"                          # optional: the normal scene the train videos show
    live = "rtsp://192.168.1.20/stream"        # optional: what fleet watch watches (a URL, camera or file)
    webhook = "http://127.0.0.1:8123/hook"     # optional: this camera's event outputs (events.options.KEYS)

    [watch]                                    # optional: event outputs for every camera (a camera's own win)
    clips = "clips"                            # each camera's clips in clips/CAMERA/
    mqtt = "mqtt://127.0.0.1"

Relative paths are relative to the manifest's folder. A problem with one camera's entry (an unknown
key, a glob that matches nothing, a missing project) is one line naming the camera; that camera is
left out and the others go on. Only a manifest that cannot be read at all is an error.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAME
from ..errors import ProjectError, VidanomError, VideoError
from ..events.options import KEYS as OUTPUT_KEYS, OutputOptions, from_table
from ..project import Project
from ..video import Source, find_sources

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

KEYS = ("project", "train", "score", "scene", "live")
WATCH = "watch"  # the top-level table of fleet-wide event outputs


@dataclass(frozen=True)
class Camera:
    """One camera's entry, its paths made absolute (patterns are expanded when a command needs them)."""

    name: str
    project: Path
    train: tuple[str, ...] = ()  # paths or glob patterns, absolute
    score: tuple[str, ...] = ()
    scene: str = "default"
    live: str | None = None  # a URL or camera as written, or a file's absolute path
    outputs: tuple[tuple[str, Any], ...] = ()  # its own event-output keys, as written (see outputs_of)


@dataclass(frozen=True)
class Manifest:
    path: Path
    cameras: list[Camera]  # the entries that could be read, in the manifest's order
    problems: list[str]  # one line per entry (or top-level key) that could not
    watch: tuple[tuple[str, Any], ...] = ()  # the [watch] table: event outputs for every camera

    def outputs_of(self, camera: Camera, flags: dict[str, Any] | None = None) -> OutputOptions:
        """A camera's event outputs: its own keys, over `flags` (OutputOptions fields: fleet watch's
        options), over the [watch] table."""
        fleet = from_table(dict(self.watch), self.folder, OutputOptions())
        return from_table(dict(camera.outputs), self.folder, replace(fleet, **(flags or {})))

    @property
    def folder(self) -> Path:
        return self.path.parent


def read_manifest(path: Path) -> Manifest:
    """Parse a manifest. Raises VidanomError if the file cannot be read, is not TOML, or names no cameras."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise VidanomError(f"cannot read the fleet manifest {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VidanomError(f"the fleet manifest {path} is not valid TOML: {exc}") from exc
    table = data.get("cameras")
    if not isinstance(table, dict) or not table:
        raise VidanomError(f'{path} names no cameras; add one: [cameras.NAME] with project = "FOLDER"')
    problems = [
        f"unknown top-level key '{k}' in {path.name} (only [cameras.NAME] tables and [{WATCH}])"
        for k in data
        if k not in ("cameras", WATCH)
    ]
    base = path.resolve().parent
    watch = _watch_table(data.get(WATCH, {}), base, problems)
    cameras = []
    for name, entry in table.items():
        try:
            cameras.append(_camera(name, entry, base))
        except VidanomError as exc:
            problems.append(f"camera {name}: {exc}")
    return Manifest(path.resolve(), cameras, problems, watch)


def _watch_table(table: Any, base: Path, problems: list[str]) -> tuple[tuple[str, Any], ...]:
    """The [watch] table, checked; a problem with it is a line, and it is left out."""
    try:
        if not isinstance(table, dict):
            raise VidanomError("must be a table of event outputs")
        from_table(table, base, OutputOptions())
    except VidanomError as exc:
        problems.append(f"[{WATCH}]: {exc}")
        return ()
    return tuple(table.items())


def _camera(name: str, entry: Any, base: Path) -> Camera:
    if not isinstance(entry, dict):
        raise VidanomError('must be a table: [cameras.NAME] with project = "FOLDER"')
    unknown = [k for k in entry if k not in KEYS and k not in OUTPUT_KEYS]
    if unknown:
        keys = ", ".join((*KEYS, *OUTPUT_KEYS))
        raise VidanomError(f"unknown key(s) {', '.join(map(repr, unknown))}; the keys are {keys}")
    outputs = {k: v for k, v in entry.items() if k in OUTPUT_KEYS}
    from_table(outputs, base, OutputOptions())  # an output key of the wrong kind: this camera's problem
    if not isinstance(entry.get("project"), str) or not entry["project"]:
        raise VidanomError('has no project = "FOLDER"')
    scene, live = entry.get("scene", "default"), entry.get("live")
    if not isinstance(scene, str) or (live is not None and not isinstance(live, str)):
        raise VidanomError("scene and live must be strings")
    return Camera(
        name,
        _absolute(base, entry["project"]),
        _patterns(base, entry.get("train", []), "train"),
        _patterns(base, entry.get("score", []), "score"),
        scene,
        live if live is None or "://" in live or live.startswith("/dev/") else str(_absolute(base, live)),
        tuple(outputs.items()),
    )


def _absolute(base: Path, path: str) -> Path:
    return base / Path(path).expanduser()


def _patterns(base: Path, value: Any, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise VidanomError(f"{key} must be a path or glob, or a list of them")
    return tuple(str(_absolute(base, v)) for v in items)


def expand(patterns: tuple[str, ...], base: Path) -> tuple[list[Path], list[str]]:
    """The paths the patterns name (a glob: what it matches, sorted), and a line per pattern that names nothing."""
    paths, problems = [], []
    for pattern in patterns:
        shown = os.path.relpath(pattern, base) if pattern.startswith(str(base)) else pattern
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            if not found:
                problems.append(f"'{shown}' matches nothing")
            paths.extend(found)
        elif Path(pattern).exists():
            paths.append(Path(pattern))
        else:
            problems.append(f"no such file or folder: {shown}")
    return list(dict.fromkeys(paths)), problems


def clips(camera: Camera, base: Path) -> tuple[list[Source], list[str]]:
    """The clips a camera's score patterns name (each once; two of one name in two folders are two
    clips, whose results the store keeps apart), and a line per problem (a pattern naming nothing, a
    folder without videos)."""
    paths, problems = expand(camera.score, base)
    sources: dict[Path, Source] = {}
    for path in paths:
        try:
            found = find_sources([path])
        except VideoError as exc:
            problems.append(str(exc))
            continue
        for src in found:
            sources.setdefault(src.path.resolve(), src)
    return list(sources.values()), problems


def open_project(camera: Camera, create: bool = False) -> Project:
    """The camera's project; with create, a missing (or empty) folder becomes one with the default config."""
    root = camera.project
    if (root / CONFIG_NAME).is_file():
        return Project.open(root)
    if not create:
        raise ProjectError(f"no project at {root}; 'vidanom fleet train' creates and trains it")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ProjectError(f"{root} exists but is not a vidanom project; name an empty or new folder")
    return Project.init(root)
