"""The command line: one thin Typer command per verb. Each opens the project, calls one library
function, and prints with rich. Library errors become a one-line message and an exit code."""

from __future__ import annotations

import functools
from dataclasses import dataclass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import heap
from .errors import VidanomError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None)  # help: main's docstring
out = Console()
err = Console(stderr=True)

ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", "-p", help="Project folder (default: $VIDANOM_PROJECT, else the current folder)."),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
WaitOpt = Annotated[
    float, typer.Option(min=0.0, help="Seconds to wait for a project another train or update is writing to.")
]


try:  # typer vendors click since 0.2x; its own exceptions (Exit, BadParameter...) pass through
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover
    from click import get_current_context  # type: ignore[no-redef]
    from click.exceptions import ClickException  # type: ignore[no-redef,assignment]


@dataclass
class _Invocation:
    """What the top-level options set for one command (kept in the click context, not in globals)."""

    debug: bool
    warnings: _Warnings


def _invocation() -> _Invocation | None:
    ctx = get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, _Invocation) else None


def _debug() -> bool:
    inv = _invocation()
    return (inv is not None and inv.debug) or os.environ.get("VIDANOM_DEBUG") == "1"


_PASS_THROUGH = (typer.Exit, typer.Abort, ClickException)
RESUMABLE = (
    "interrupted: the previous model is intact and what this run finished is saved; "
    "continue it with the same command and --resume"
)


def _one_line(text: object) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _describe(exc: Exception) -> tuple[str, int]:
    """The one-line message and exit code for an exception that reached the command."""
    if isinstance(exc, VidanomError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):  # disk full, permissions, a file that vanished
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return (
            f"{exc.strerror or exc}{': ' + where if where else ''}; "
            "check the path, its permissions and the free disk space"
        ), 2
    if isinstance(exc, MemoryError):
        return "out of memory; lower frames.width/height, train.batch_size or score.batch_size in vidanom.json", 1
    return (
        f"unexpected {type(exc).__name__}: {exc} (a bug in vidanom: please report it; "
        "'vidanom --debug ...' shows the traceback)"
    ), 1


def cli_errors(fn: Callable[..., Any] | None = None, *, interrupted: str = "interrupted") -> Callable[..., Any]:
    """Turn every error and Ctrl-C into one line on stderr and an exit code (no traceback).

    Exit codes: 2 for usage and input errors (and files that cannot be read or written), 3 for a
    project busy with another command, 130 for Ctrl-C, 1 for anything unexpected (a bug).
    `vidanom --debug` (or VIDANOM_DEBUG=1) lets the exception and its traceback through instead.
    interrupted: what Ctrl-C prints (RESUMABLE for the commands that --resume continues); used as
    `@cli_errors` or `@cli_errors(interrupted=RESUMABLE)`.
    """
    if fn is None:
        return functools.partial(cli_errors, interrupted=interrupted)
    command = fn

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            if _debug():
                raise
            err.print(interrupted, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence against tracebacks
            if _debug():
                raise
            message, code = _describe(exc)
            err.print(f"error: {_one_line(message)}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper


class _Warnings(logging.Handler):
    """The library's log warnings (a clip that broke off midway...) as one 'warning:' line each."""

    def __init__(self) -> None:
        super().__init__()
        self.muted = False  # while a command reports the same warnings itself

    def emit(self, record: logging.LogRecord) -> None:
        if not self.muted and record.levelno >= logging.WARNING:
            err.print(f"warning: {_one_line(record.getMessage())}", markup=False, highlight=False, soft_wrap=True)


@app.callback()
def main(
    ctx: typer.Context, debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False
) -> None:
    """vidanom: video anomaly detection with a β-VAE, an LSTM-MDN and continual learning.

    Example: vidanom init cam1 && cd cam1 && vidanom train ~/normal_videos
    """
    handler, logger = _Warnings(), logging.getLogger("vidanom")
    logger.addHandler(handler)  # for this command only: importing the CLI changes no logging
    ctx.call_on_close(lambda: logger.removeHandler(handler))
    ctx.obj = _Invocation(debug, handler)


def _open(project: Path | None):
    from .project import Project

    return Project.find(project)


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int, dict[str, float]], None]]:
    """A rich progress bar driven by the library's progress(task, done, total, info) callback."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and not os.environ.get("VIDANOM_PROGRESS"),
    )
    tasks: dict[str, Any] = {}

    def update(task: str, done: int, total: int, info: dict[str, float]) -> None:
        if task not in tasks:
            tasks[task] = bar.add_task(task, total=total or None, info="")
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())
        bar.update(tasks[task], completed=done, total=total or None, info=text)

    with bar:
        yield update


@contextmanager
def _muted() -> Iterator[None]:
    """Within the block, the library's warnings are not printed (the command reports them itself)."""
    inv = _invocation()
    if inv is None:
        yield
        return
    inv.warnings.muted = True
    try:
        yield
    finally:
        inv.warnings.muted = False


def _device(name: str):
    from .fitting import resolve_device

    return resolve_device(name)


@app.command()
@cli_errors
def init(directory: Annotated[Path, typer.Argument(help="Folder to create the project in.")] = Path(".")) -> None:
    """Create a project folder with a default config.

    Example: vidanom init cam1
    """
    from .project import Project

    project = Project.init(directory)
    out.print(f"created project in {project.root}  (config: {project.root / 'vidanom.json'})")


@app.command()
@cli_errors
def extract(
    videos: Annotated[list[Path], typer.Argument(help="Video files, frame folders or folders of videos.")],
    scene: Annotated[str, typer.Option(help="Name of the normal scene these clips show.")] = "default",
    project: ProjectOpt = None,
) -> None:
    """Decode videos into the project's frame cache (done once per file).

    Example: vidanom extract ~/normal/*.mp4
    """
    from .training import extract as extract_clips

    proj = _open(project)
    with _progress() as progress:
        results = extract_clips(proj, videos, scene, progress)
    for meta, new in results:
        note = "extracted" if new else "already cached"
        out.print(f"{meta.name}: {meta.frames} frames at {meta.fps:g} fps, {note}")


KeepFramesOpt = Annotated[
    int | None,
    typer.Option(
        "--keep-frames",
        min=0,
        metavar="N",
        help="Keep about N frames of each scene's footage with the model (overrides train.keep_frames; 0: none, "
        "the default), so that later updates calibrate old scenes anew on them instead of carrying their "
        "statistics through the models' drift (this run only; set train.keep_frames to keep them from run to run). "
        "They cost 4 KB a 64x64 gray frame per scene in every version's folder, and they are footage: the people the "
        "camera saw, kept as long as the project.",
        show_default=False,
    ),
]


@app.command()
@cli_errors(interrupted=RESUMABLE)
def train(
    videos: Annotated[list[Path] | None, typer.Argument(help="Normal videos to add (optional).")] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="Optimiser steps for each stage at most, whatever the footage (overrides train.*steps)."
        ),
    ] = None,
    stage: Annotated[
        str,
        typer.Option(help="vae, mdn, all, or calibrate (fit nothing: a new threshold after score.* settings changed)."),
    ] = "all",
    device: DeviceOpt = "auto",
    seed: Annotated[int | None, typer.Option(help="Random seed (overrides the config).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training run.")] = False,
    scene: Annotated[str, typer.Option(help="Scene the videos show.")] = "default",
    keep_frames: KeepFramesOpt = None,
    wait: WaitOpt = 5.0,  # project.LOCK_WAIT, not imported here: it brings in torch
    project: ProjectOpt = None,
) -> None:
    """Train the β-VAE, then the LSTM-MDN, on normal video, and calibrate the threshold.

    Each stage runs a budget of optimiser steps and stops early once held-out normal footage stops
    improving; the threshold is set on held-out footage, and the false-alarm rate to expect is printed.
    Started by torchrun (torchrun --nproc_per_node=N -m vidanom train ...), the processes train one
    model together (DistributedDataParallel); rank 0 writes and reports.

    Example: vidanom train ~/normal_videos --steps 2000
    """
    from .config import fixed_steps, with_overrides
    from .distributed import from_env
    from .progress import no_progress
    from .training import STAGES, train as train_model

    if stage not in STAGES:
        raise typer.BadParameter(f"--stage must be one of {', '.join(STAGES)}")
    heap.keep_freed_memory()  # each optimiser step reuses the memory the last one freed
    proj = _open(project)
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides.update(fixed_steps(steps))
    if seed is not None:
        overrides["seed"] = seed
    if keep_frames is not None:
        overrides["keep_frames"] = keep_frames
    proj.config = with_overrides(proj.config, train=overrides)
    group = from_env()
    run = {"stage": stage, "device": _device(device), "resume": resume, "scene": scene, "group": group, "wait": wait}
    if group is not None and not group.main:  # rank 0 reports for all of them
        train_model(proj, videos or [], progress=no_progress, **run)
        return
    with _progress() as progress:
        result = train_model(proj, videos or [], progress=progress, **run)
    _print_trained(
        result, f"model {result.version}: {result.clips} clips, {result.frames} frames, {result.seconds:.0f} s"
    )


def _print_trained(result: Any, head: str) -> None:
    """What train and update say of the new version: quality, threshold, the false alarms to expect."""
    psnr = f", reconstruction {result.psnr:.1f} dB PSNR" if result.psnr is not None else ""
    fa = (
        f" (expected to flag {100 * result.false_alarms:.1f}% of new normal footage)"
        if result.false_alarms is not None
        else ""
    )
    out.print(f"{head}{psnr}; threshold {result.threshold:.2f}{fa}", markup=False, highlight=False)
    for warning in result.warnings:
        err.print(f"warning: {_one_line(warning)}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@cli_errors(interrupted=RESUMABLE)
def update(
    videos: Annotated[list[Path] | None, typer.Argument(help="Normal videos of the new scene.")] = None,
    scene: Annotated[str | None, typer.Option(help="Name of the new scene (default: scene<N>).")] = None,
    strategy: Annotated[str, typer.Option(help="replay, ewc or finetune.")] = "replay",
    replay_ratio: Annotated[
        float | None,
        typer.Option(help="Share of every batch replayed from old scenes (default: grows with their number)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimiser steps for each stage at most (overrides the config).")
    ] = None,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted update.")] = False,
    keep_frames: KeepFramesOpt = None,
    wait: WaitOpt = 5.0,  # project.LOCK_WAIT, not imported here: it brings in torch
    project: ProjectOpt = None,
) -> None:
    """Learn a new normal scene without forgetting the ones the model knows (generative replay).

    Replay mixes samples of the old scenes, decoded by the previous model, into every batch and holds
    the model to the previous one's outputs on them (config train.replay_distill, 0 turns that off; its
    encoder half weighs train.replay_distill_encoder times as much as its decoder half).
    Every other scene stays scored with all six components: its calibration is carried through the
    models' drift on its replayed frames, or measured anew on the frames kept of it (--keep-frames);
    'vidanom status' shows which.

    Example: vidanom update ~/after_camera_move/*.mp4 --scene moved
    """
    from .config import fixed_steps, with_overrides
    from .distributed import from_env
    from .training import update as update_model

    if from_env() is not None:
        raise VidanomError("update trains in one process; run it without torchrun (train runs under torchrun)")
    heap.keep_freed_memory()  # each optimiser step reuses the memory the last one freed
    proj = _open(project)
    overrides: dict[str, Any] = fixed_steps(steps) if steps is not None else {}
    if keep_frames is not None:
        overrides["keep_frames"] = keep_frames
    proj.config = with_overrides(proj.config, train=overrides)
    with _progress() as progress:
        r = update_model(
            proj,
            videos or [],
            scene,
            strategy=strategy,
            replay_ratio=replay_ratio,
            device=_device(device),
            resume=resume,
            progress=progress,
            wait=wait,
        )
    _print_trained(
        r,
        f"model {r.version}: learned scene '{r.scene}' from {r.clips} clips ({r.frames} frames) "
        f"in {r.seconds:.0f} s with {strategy}",
    )


@app.command()
@cli_errors
def score(
    videos: Annotated[list[Path], typer.Argument(help="Videos or frame folders to score.")],
    device: DeviceOpt = "auto",
    annotate: Annotated[
        Path | None,
        typer.Option(
            help="Also write this video (.mp4) of the clip: error heatmap on its anomalous frames, "
            "score strip with a cursor."
        ),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Score every frame of new clips; write CSV, JSON summary and a timeline PNG per clip.

    Example: vidanom score clip.mp4 --annotate clip_annotated.mp4
    """
    from .annotate import check_request
    from .detector import Detector
    from .results import score as score_clips

    proj = _open(project)
    if annotate is not None:
        check_request(videos, annotate)  # before scoring, not after
    table = Table("clip", "frames", "anomalous segments", "peak score", "threshold", "model")
    detector = Detector.load(proj)  # the version current now, for every clip, whatever a training publishes
    scored = []
    with _progress() as progress, _muted():  # r.warning says it all
        for video in videos:
            for r in score_clips(proj, video, _device(device), progress, detector):
                scored.append(r)
                spans = ", ".join(f"{s['start_time']:.1f}-{s['end_time']:.1f}s" for s in r.segments[:4])
                more = f" (+{len(r.segments) - 4})" if len(r.segments) > 4 else ""
                table.add_row(
                    r.key, str(r.frames), (spans + more) or "none", f"{r.peak:.2f}", f"{r.threshold:.2f}", r.version
                )
                if r.warning:
                    err.print(
                        f"warning: {r.key}: {_one_line(r.warning)}", markup=False, highlight=False, soft_wrap=True
                    )
    out.print(table)
    _accept_lines(proj, scored, project)
    out.print(f"scores in {proj.scores_dir}")
    if annotate is not None:
        _annotate(proj, videos[0], annotate, device)


def _accept_lines(proj: Any, scored: list[Any], given: Path | None) -> None:
    """For each event, the command that says it is normal (in the project as the user named it)."""
    from .accepting import accept_command, clip_name
    from .store import ScoreStore

    store = ScoreStore.of(proj)
    for r in scored:
        for number, s in enumerate(r.segments, 1):
            command = accept_command(clip_name(store, r.key), number, given)
            out.print(
                f"{r.key} event {number} at {s['start_time']:.1f}-{s['end_time']:.1f} s; it is normal? {command}",
                markup=False,
                highlight=False,
                soft_wrap=True,  # a command to copy: never broken across lines
            )


def _annotate(proj: Any, video: Path, output: Path | None, device: str) -> None:
    from .annotate import annotate

    with _progress() as progress:
        r = annotate(proj, video, output, _device(device), progress)
    out.print(f"wrote {r.path}: {r.frames} frames, {r.width}x{r.height} at {r.fps:g} fps")
    if r.note:
        err.print(f"note: {r.note}", markup=False, highlight=False)


@app.command(name="annotate")
@cli_errors
def annotate_(
    video: Annotated[Path, typer.Argument(help="A scored video file or frame folder, or the name of a scored clip.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Video to write (.mp4, .mkv, .mov...; default: scores/CLIP.annotated.mp4)."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    project: ProjectOpt = None,
) -> None:
    """Write a scored clip as a video: error heatmap on its anomalous frames, score strip with a cursor.

    Same frame count, frame rate and resolution as the clip (H.264). Uses the stored scores: run
    'vidanom score' first (or 'vidanom score CLIP --annotate OUT.mp4' to do both).

    Example: vidanom annotate clip.mp4 -o clip_annotated.mp4
    """
    _annotate(_open(project), video, output, device)


@app.command()
@cli_errors
def gallery(
    video: Annotated[Path, typer.Argument(help="A scored video file or frame folder, or the name of a scored clip.")],
    k: Annotated[int, typer.Option("-k", help="How many frames to show.")] = 8,
    min_gap: Annotated[float, typer.Option(help="Seconds between any two frames shown.")] = 1.0,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="PNG to write (default: scores/CLIP.gallery.png).")
    ] = None,
    device: DeviceOpt = "auto",
    project: ProjectOpt = None,
) -> None:
    """One PNG of a scored clip's k most anomalous frames: original, reconstruction, error heatmap.

    Example: vidanom gallery clip.mp4 -k 8
    """
    from .gallery import gallery as make_gallery

    proj = _open(project)
    with _progress() as progress:
        g = make_gallery(proj, video, k, output, min_gap, _device(device), progress)
    out.print(f"wrote {g.path}")
    for f, t, s in zip(g.frames, g.times, g.scores):
        out.print(f"  frame {f} at {t:.2f} s: score {s:.2f}")


@app.command()
@cli_errors
def report(
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Folder to write index.html and its assets into (default: PROJECT/report)."
        ),
    ] = None,
    videos: Annotated[
        bool,
        typer.Option(
            help="Also make the annotated video of every clip with events that has none (slow: decodes "
            "each clip again)."
        ),
    ] = False,
    device: DeviceOpt = "auto",
    project: ProjectOpt = None,
) -> None:
    """One HTML page of the scored clips: totals, model, events with images, timelines, videos.

    Open DIR/index.html in a browser: it needs no server and no internet. Images already made are
    reused, so running it again after scoring more clips is quick.

    Example: vidanom report -o night_report --videos
    """
    from .report import build_report

    proj = _open(project)
    with _progress() as progress:
        r = build_report(
            [(proj.root.resolve().name, proj)], output or proj.root / "report", videos, _device(device), progress
        )
    made = ", ".join(f"{n} {kind}" for kind, n in r.made.items() if n) or "nothing new"
    out.print(f"wrote {r.index}: {r.clips} clips, {r.events} events ({made} made)", markup=False, highlight=False)
    for note in r.notes:
        err.print(f"note: {_one_line(note)}", markup=False, highlight=False, soft_wrap=True)


def _options(items: list[str]) -> dict[str, str]:
    """['key=value', ...] → {'key': 'value'} (FFmpeg input options)."""
    if any("=" not in item for item in items):
        raise typer.BadParameter("input options are KEY=VALUE, e.g. rtsp_transport=tcp")
    return dict(item.split("=", 1) for item in items)


def _json_line(live: Any, item: dict[str, Any]) -> None:
    """One JSON line on stdout; above a live display (rich.live.Live), when there is one."""
    line = json.dumps(item)
    if live is not None:
        live.console.print(line, markup=False, highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _WatchView:
    """What `watch` shows: events and gaps as JSON lines on stdout (flushed at once); on stderr a line
    when the stream is lost and when it is back; and a rich status line (when stdout is a terminal)
    or, otherwise, a warning on stderr when it falls behind."""

    NOTE_EVERY = 5.0  # seconds between two warnings about dropped frames

    def __init__(self, source: str) -> None:
        from rich.live import Live

        self.source, self.started, self.noted, self.noted_at, self.state = source, False, 0, 0.0, "watching"
        self.live = Live(console=out, transient=True, auto_refresh=False) if out.is_terminal else None

    def event(self, event: dict[str, Any]) -> None:
        _json_line(self.live, event)

    def health(self, record: dict[str, Any]) -> None:
        """The stream's loss (its line on stderr comes with the status) and its return."""
        self.event(record)
        if record["state"] == "back":
            _say(
                f"stream back after {record['gap']:.1f} s ({record['attempts']} attempt(s)); watching from frame "
                f"{record['to_frame']} at {record['to_time']:.1f} s"
            )

    def status(self, s: Any) -> None:
        if not self.started:
            self.started = True
            _say(
                f"watching {self.source} at {s.fps:g} fps with model {s.version} (threshold {s.threshold:.2f}); "
                "Ctrl-C to stop"
            )
        if s.state == "reconnecting" and self.state != "reconnecting":
            _say(f"stream lost ({s.reason}); reconnecting")
        self.state = s.state
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(self._line(s)), refresh=True)
        else:
            self._note_drops(s)

    @staticmethod
    def _line(s: Any) -> str:
        if s.state == "reconnecting":
            tried = f"attempt {s.attempts} failed ({s.reason})" if s.attempts else f"lost ({s.reason})"
            return f"{s.seconds:7.1f} s  reconnecting: {tried}; next attempt in {s.retry_in:g} s  events {s.events}"
        state = "[ANOMALY]" if s.in_event else "normal"
        return (
            f"{s.seconds:7.1f} s  frames {s.frames}  dropped {s.dropped}  events {s.events}  "
            f"score {s.score:6.2f} {state}  latency {s.latency:.2f} s"
        )

    def _note_drops(self, s: Any) -> None:
        import time

        if s.dropped > self.noted and time.monotonic() - self.noted_at > self.NOTE_EVERY:
            _say(f"warning: falling behind: {s.dropped} frames dropped so far to keep the latency under --max-latency")
            self.noted, self.noted_at = s.dropped, time.monotonic()


def _say(line: str) -> None:
    """One plain line on stderr."""
    err.print(line, markup=False, highlight=False, soft_wrap=True)


# shared by watch and fleet watch
MaxLatencyOpt = Annotated[
    float, typer.Option(help="Seconds a frame of a live source may wait; later ones are dropped.")
]
# the event outputs (events.OutputOptions); None: not given (the default, or in fleet watch the manifest's)
ClipsOpt = Annotated[
    Path | None,
    typer.Option(
        "--clips",
        metavar="DIR",
        help="Save each event as an MP4 of the camera's own video (remuxed, not re-encoded, where MP4 holds "
        "its codec) from --pre s before to --post s after it, and a JPEG of its peak with the heatmap, "
        "in DIR/CAMERA/.",
        show_default=False,
    ),
]
PreOpt = Annotated[float | None, typer.Option("--pre", help="Seconds of video before an event [default: 5].")]
PostOpt = Annotated[float | None, typer.Option("--post", help="Seconds of video after an event [default: 5].")]
MaxClipOpt = Annotated[
    float | None,
    typer.Option(
        "--max-clip",
        help="A clip lasts at most this many seconds, pre and post included; a longer event's clip stops "
        "there [default: 120].",
    ),
]
KeepOpt = Annotated[float | None, typer.Option("--keep", help="Delete clips older than this many days.")]
KeepSizeOpt = Annotated[
    str | None,
    typer.Option("--keep-size", help="Delete the oldest clips while a camera's take more than this (e.g. 20G)."),
]
ExecOpt = Annotated[
    str | None,
    typer.Option(
        "--exec", metavar="CMD", help="Run this shell command per event and health change, the JSON on its stdin."
    ),
]
WebhookOpt = Annotated[
    str | None, typer.Option("--webhook", metavar="URL", help="POST each event's JSON here (retried).")
]
MqttOpt = Annotated[
    str | None,
    typer.Option(
        "--mqtt", metavar="URL", help="Publish on mqtt://[USER:PASS@]HOST[:PORT][/PREFIX], topics PREFIX/CAMERA/..."
    ),
]
HaOpt = Annotated[
    bool | None,
    typer.Option("--ha-discovery", help="Announce each camera to Home Assistant as a binary sensor (MQTT)."),
]
CooldownOpt = Annotated[
    float | None,
    typer.Option("--cooldown", help="Merge a camera's events closer than this many seconds into one notification."),
]
StrictOpt = Annotated[
    bool | None,
    typer.Option(
        "--strict-outputs",
        help="Refuse to start when the webhook's host or the MQTT broker cannot be reached (default: warn, "
        "watch, and deliver once they can).",
    ),
]


def _output_flags(**flags: Any) -> dict[str, Any]:
    """The output flags given, as OutputOptions fields."""
    from .events.options import parse_size

    names = {"keep": "keep_days", "keep_size": "keep_bytes", "exec_": "command"}
    given = {names.get(k, k): v for k, v in flags.items() if v is not None}
    if "keep_bytes" in given:
        given["keep_bytes"] = parse_size(given["keep_bytes"])
    return given


@app.command()
@cli_errors
def watch(
    source: Annotated[
        str, typer.Argument(help="rtsp://, http(s)://, udp://... URL, a camera (/dev/video0) or a video file.")
    ],
    realtime: Annotated[bool, typer.Option(help="Play a file at its own frame rate, as if live.")] = False,
    follow: Annotated[
        bool, typer.Option(help="Keep reading a file that is still being written (MPEG-TS, MKV, raw H.264; not MP4).")
    ] = False,
    idle: Annotated[float, typer.Option(help="With --follow: stop after this many seconds without new data.")] = 10.0,
    max_latency: MaxLatencyOpt = 2.0,
    reconnect: Annotated[
        bool | None,
        typer.Option(
            "--reconnect/--no-reconnect",
            help="When the stream ends, breaks or stalls, open it again after 1, "
            "2, 4 ... 30 s (default: on for URLs and cameras, off for files).",
            show_default=False,
        ),
    ] = None,
    input_option: Annotated[
        list[str] | None,
        typer.Option(
            "--input-option",
            "-i",
            help="FFmpeg input option KEY=VALUE, e.g. video_size=1280x720 or "
            "rtsp_transport=udp (RTSP: TCP, then UDP if the server refuses TCP).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    project: ProjectOpt = None,
    name: Annotated[
        str | None,
        typer.Option(help="The camera's name in the JSON, MQTT topics and clip names (default: from the source)."),
    ] = None,
    clips: ClipsOpt = None,
    pre: PreOpt = None,
    post: PostOpt = None,
    max_clip: MaxClipOpt = None,
    keep: KeepOpt = None,
    keep_size: KeepSizeOpt = None,
    exec_: ExecOpt = None,
    webhook: WebhookOpt = None,
    mqtt: MqttOpt = None,
    ha_discovery: HaOpt = None,
    cooldown: CooldownOpt = None,
    strict_outputs: StrictOpt = None,
) -> None:
    """Score a live stream; print one JSON line per anomalous event as soon as it ends.

    Each line has the event's start, peak and end as frames and seconds, and its peak score.
    A URL or camera that drops out is opened again; a line {"kind": "health", "state": "down"}
    says when it is lost, {"state": "back", "gap": seconds, ...} when it comes back. With --clips
    each event's line comes when its clip is written (--post s after its end) and names the clip
    and its snapshot. --exec, --webhook and --mqtt get the same JSON; an unreachable webhook or
    broker is a warning (the watch goes on and delivers when it can) unless --strict-outputs.
    Ctrl-C ends it cleanly (exit code 0) with a summary on stderr.

    Example: vidanom watch rtsp://192.168.1.20/stream --clips clips --mqtt mqtt://127.0.0.1 --ha-discovery
    """
    from dataclasses import replace

    from .events.options import OutputOptions
    from .watch import WatchOptions, watch as run_watch

    if not max_latency > 0 or not idle > 0:
        raise typer.BadParameter("--max-latency and --idle must be positive numbers of seconds")
    given = _output_flags(
        clips=clips,
        pre=pre,
        post=post,
        max_clip=max_clip,
        keep=keep,
        keep_size=keep_size,
        exec_=exec_,
        webhook=webhook,
        mqtt=mqtt,
        ha_discovery=ha_discovery,
        cooldown=cooldown,
        strict=strict_outputs,
    )
    proj = _open(project)
    options = WatchOptions(realtime, idle if follow else 0.0, max_latency, _options(input_option or []), reconnect)
    view = _WatchView(source)
    with view.live if view.live is not None else nullcontext():
        s = run_watch(
            proj,
            source,
            options,
            view.event,
            view.status,
            _device(device),
            on_health=view.health,
            outputs=replace(OutputOptions(), **given),
            camera=name,
        )
    fps = s.frames / s.seconds if s.seconds > 0 else 0.0
    gaps = f", {s.gaps} gap(s) of {s.gap_seconds:.1f} s in all" if s.gaps else ""
    _say(
        f"{'stopped' if s.interrupted else 'stream ended'}: {s.frames} frames scored in {s.seconds:.1f} s "
        f"({fps:.1f} frames/s), {s.dropped} dropped, {s.events} event(s){gaps}"
    )
    if s.outputs:
        _say(f"outputs: {_outputs_line(s.outputs)}")


def _outputs_line(stats: dict[str, Any], short: bool = False) -> str:
    """events.EventOutputs.stats in a line: clips written (failed), and per notifier sent, failed, dropped."""
    parts = []
    clips = stats.get("clips")
    if clips:
        failed = f", {clips['failed']} failed" if clips["failed"] else ""
        skipped = f", {clips['skipped']} skipped" if clips["skipped"] else ""
        parts.append(f"{clips['written']} clip(s){'' if short else ' in ' + clips['folder']}{failed}{skipped}")
    for name in ("exec", "webhook", "mqtt"):
        if name in stats:
            n = stats[name]
            counts = [f"{n['sent']} sent"] + [f"{n[k]} {k}" for k in ("failed", "dropped", "pending") if n.get(k)]
            parts.append(f"{name} {', '.join(counts)}")
    if stats.get("merged"):
        parts.append(f"{stats['merged']} event(s) merged by the cooldown")
    return "; ".join(parts)


@app.command()
@cli_errors
def plot(
    clip: Annotated[
        str, typer.Argument(help="A scored clip: its name (its key where two share it), or its video's path.")
    ],
    labels: Annotated[Path | None, typer.Option(help="Labels JSON to shade ground truth.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="PNG to write.")] = None,
    project: ProjectOpt = None,
) -> None:
    """Redraw a clip's timeline from its stored scores.

    Example: vidanom plot Test001.mp4 --labels labels.json
    """
    from .results import plot_clip

    path = plot_clip(_open(project), clip, labels, output)
    out.print(f"wrote {path}")


@app.command(name="eval")
@cli_errors
def eval_(
    labels: Annotated[Path, typer.Argument(help="Labels JSON: {clip: [[start, end], ...]}.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    project: ProjectOpt = None,
) -> None:
    """Frame-level micro AUROC, AUPRC and EER of the scored clips against labels.

    Example: vidanom eval labels.json --json
    """
    from .results import evaluate

    res = evaluate(_open(project), labels)
    if as_json:
        print(json.dumps(res))
        return
    t = Table("metric", "value")
    for key in ("auroc", "auprc", "eer"):
        t.add_row(key, "n/a" if res[key] is None else f"{res[key]:.4f}")
    t.add_row("clips", str(res["clips"]))
    t.add_row("frames (anomalous)", f"{res['frames']} ({res['anomalous_frames']})")
    out.print(t)
    if res["per_clip_auroc"]:
        pc = Table("clip", "AUROC")
        for name, v in res["per_clip_auroc"].items():
            pc.add_row(name, f"{v:.3f}")
        out.print(pc)
    if res["missing"]:
        err.print(f"warning: {len(res['missing'])} labelled clip(s) not scored: {', '.join(res['missing'][:5])}")


@app.command()
@cli_errors
def accept(
    clip: Annotated[
        str | None, typer.Argument(help="A scored clip: its name as 'score' lists it, or its video's path.")
    ] = None,
    event: Annotated[
        list[int] | None,
        typer.Option("--event", "-e", help="An event's number, as 'score' lists them; repeat it to accept several."),
    ] = None,
    start: Annotated[float | None, typer.Option("--from", help="Or a stretch: from this second of the clip...")] = None,
    end: Annotated[float | None, typer.Option("--to", help="...to this one.")] = None,
    events_file: Annotated[
        Path | None,
        typer.Option(
            "--events",
            metavar="FILE",
            help="Or the events in a file of JSON lines as 'watch' or 'fleet watch' print them ('-': stdin).",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    wait: WaitOpt = 5.0,  # project.LOCK_WAIT, not imported here: it brings in torch
    project: ProjectOpt = None,
) -> None:
    """Say that what raised an alarm is normal: the model learns it in a short update.

    The stretch (with accept.margin seconds either side) joins the scene's normal footage; the model
    learns it beside the footage it knows, is recalibrated, and becomes a new version; rescore the clip
    to check what changed (README, 'Correct the alarms'). Several events are learned in one update.
    'vidanom use VERSION' makes the version before it current again.

    Example: vidanom accept clip.mp4 --event 2 --event 3
    """
    from .accepting import accept as accept_clip, accept_events

    if (clip is None) == (events_file is None):
        raise VidanomError("name a scored CLIP (with --event N or --from T0 --to T1), or --events FILE; not both")
    heap.keep_freed_memory()  # each optimiser step reuses the memory the last one freed
    proj = _open(project)
    run: dict[str, Any] = {"device": _device(device), "wait": wait}
    with _progress() as progress:
        if events_file is not None:
            r = accept_events(proj, _event_lines(events_file), progress=progress, **run)
        else:
            assert clip is not None
            r = accept_clip(proj, clip, events=event or [], start=start, end=end, progress=progress, **run)
    what = "; ".join(
        f"{a['clip']} {'event ' + str(a['event']) + ' ' if a.get('event') else ''}({a['from']:.1f}-{a['to']:.1f} s)"
        for a in r.accepted
    )
    fa = "" if r.false_alarms is None else f" (expected to flag {100 * r.false_alarms:.1f}% of new normal footage)"
    out.print(
        f"model {r.version}: accepted {what} as normal in scene '{r.scene}' ({r.frames} frames with the margins), "
        f"{r.steps} steps in {r.seconds:.0f} s; threshold {r.threshold:.2f}{fa}",
        markup=False,
        highlight=False,
    )
    for warning in r.warnings:
        _say(f"warning: {_one_line(warning)}")
    if r.parent:
        out.print(f"to undo: vidanom use {r.parent}", markup=False, highlight=False, soft_wrap=True)


def _event_lines(path: Path) -> list[dict[str, Any]]:
    """The events in a file of JSON lines (or stdin, '-'); other records (health) are left out."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise VidanomError(f"line {number} of {path} is not JSON: pass the lines 'vidanom watch' prints") from None
        if isinstance(item, dict) and item.get("kind", "event") == "event":
            events.append(item)
    if not events:
        raise VidanomError(f"{path} holds no event to accept")
    return events


@app.command()
@cli_errors
def use(
    version: Annotated[str, typer.Argument(help="The version to make current, e.g. v0003 ('status' lists them).")],
    wait: WaitOpt = 5.0,
    project: ProjectOpt = None,
) -> None:
    """Make a model version current again, e.g. to undo an accept or an update.

    The versions after it stay on disk ('vidanom use' one of them to go back); what they accepted
    leaves the scene's normal footage while they are not current.

    Example: vidanom use v0003
    """
    proj = _open(project)
    before = proj.use_version(version, wait)
    out.print(f"model {version} is current (it was {before or 'none'})", markup=False, highlight=False)


mask = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
app.add_typer(mask, name="mask")


@mask.callback()
def mask_main() -> None:
    """Zones of the picture to ignore: what happens inside them never raises a frame's score.

    Example: vidanom mask add 0,0 200,0 200,40 0,40
    """


@mask.command(name="add")
@cli_errors
def mask_add(
    points: Annotated[list[str], typer.Argument(help="The polygon's corners X,Y in the camera's pixels (3 or more).")],
    size: Annotated[
        str | None,
        typer.Option(help="The camera's frame WIDTHxHEIGHT (default: that of the project's clips)."),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Add a zone to ignore: a polygon in the camera's own pixels, kept in vidanom.json.

    Set before training, the model spends no capacity on it either; added later, run 'vidanom
    train --stage calibrate' to set the threshold for it. 'gallery', 'annotate' and 'report' draw it.

    Example: vidanom mask add 0,0 200,0 200,40 0,40
    """
    from .zones import add_zone, parse_point, parse_size

    proj = _open(project)
    m = add_zone(proj, [parse_point(p) for p in points], parse_size(size) if size else None)
    out.print(
        f"{len(m.polygons)} zone(s) to ignore on the camera's {m.width}x{m.height} frame", markup=False, highlight=False
    )


@mask.command(name="list")
@cli_errors
def mask_list(project: ProjectOpt = None) -> None:
    """List the zones to ignore.

    Example: vidanom mask list
    """
    m = _open(project).config.score.mask
    if not m.polygons:
        out.print("no zones to ignore")
        return
    out.print(f"zones to ignore, in the camera's {m.width}x{m.height} pixels:", markup=False)
    for i, polygon in enumerate(m.polygons, 1):
        out.print(f"  {i}: " + " ".join(f"{x:g},{y:g}" for x, y in polygon), markup=False, highlight=False)


@mask.command(name="clear")
@cli_errors
def mask_clear(project: ProjectOpt = None) -> None:
    """Remove every zone to ignore.

    Example: vidanom mask clear
    """
    from .zones import clear_zones

    out.print(f"removed {clear_zones(_open(project))} zone(s)")


@app.command()
@cli_errors
def status(project: ProjectOpt = None) -> None:
    """Show the project's config, clips, model versions, threshold and scored clips.

    Example: vidanom status -p cam1
    """
    from .status import project_status

    s = project_status(_open(project))
    out.print(f"[bold]project[/bold] {s.root}")
    out.print(f"config (schema {s.config['schema_version']}):")
    for section, values in s.config.items():
        if isinstance(values, dict):
            out.print(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()), markup=False)
    out.print(f"cached clips: {s.cached_clips} ({s.cached_frames} frames, {s.cache_bytes / 1e6:.1f} MB)")
    t = Table("version", "scene", "parent", "how", "frames", "PSNR dB", "threshold (false alarms)")
    for v in s.versions:
        fa = "" if v.false_alarms is None else f" ({100 * v.false_alarms:.1f}%)"
        t.add_row(
            f"[bold]{v.name}*[/bold]" if v.current else v.name,
            v.scene,
            v.parent or "-",
            v.how,
            "" if v.frames is None else str(v.frames),
            "-" if v.psnr is None else f"{v.psnr:.1f}",
            f"{v.threshold:.2f}{fa}",
        )
    if s.current:
        t.caption = f"* current version: {s.current}"
    out.print(t if s.versions else "models: none yet (run 'vidanom train VIDEO...')")
    if s.scenes:
        out.print(_scene_table(s.scenes, s.current))
    for v in s.versions:
        if v.accepted:
            out.print(f"{v.name} accepted as normal: {'; '.join(v.accepted)}", markup=False, highlight=False)
    if len(s.versions) > 1:
        out.print("'vidanom use VERSION' makes another version current (undo)", markup=False, highlight=False)
    _disagreements(
        s.trained_otherwise, "the model scores as it was trained; 'vidanom train' trains anew with vidanom.json's"
    )
    _disagreements(
        s.calibrated_otherwise,
        "its threshold was set for the model's; 'vidanom train --stage calibrate' sets one for vidanom.json's",
    )
    for problem in s.problems:
        err.print(f"warning: {_one_line(problem)}", markup=False, highlight=False, soft_wrap=True)
    if s.interrupted is not None:
        scene = f" of scene '{s.interrupted.scene}'" if s.interrupted.scene else ""
        out.print(
            f"an interrupted {s.interrupted.command} run{scene} can be continued: the same command with --resume",
            markup=False,
        )
    shown = f" ({', '.join(s.scored[:8])}{' ...' if len(s.scored) > 8 else ''})" if s.scored else ""
    out.print(f"scored clips: {len(s.scored)}{shown}", markup=False)


def _scene_table(scenes: list[Any], version: str | None) -> Table:
    """Each scene of the current model: what it is scored with, what its calibration rests on, how sure it is."""
    t = Table("scene", "scored with", "calibrated on", "threshold (false alarms)", "sure", title=f"scenes of {version}")
    for row in scenes:
        fa = "" if row.false_alarms is None else f" ({100 * row.false_alarms:.1f}%)"
        sure = "" if row.sure is None else f"{100 * row.sure:.0f}%"
        t.add_row(row.name, ", ".join(row.components), _calibrated_on(row), f"{row.threshold:.2f}{fa}", sure)
    t.caption = (
        "sure: that the threshold flags at most score.false_alarms of the scene's new normal frames, from its "
        "held-out frames; drift: how far updates moved the scene's statistics since they were measured, in its spreads"
    )
    return t


def _calibrated_on(row: Any) -> str:
    if row.on == "unknown":
        return "unknown (a model of an earlier release)"
    frames = "" if row.frames is None else f"{row.frames} + {row.held_out} held-out frames of "
    what = f"{frames}{row.measured_on or row.on}"
    if row.on != "carried":
        return what
    drift = ", ".join(f"{k} {v:.2f}" for k, v in row.drift.items())
    since = f" in {row.since}" if row.since else ""
    return f"{what}{since}, carried through {row.updates} update(s) (drift {drift})"


def _disagreements(lines: list[str], then: str) -> None:
    """Where vidanom.json and the current model disagree, and what that means."""
    if lines:
        out.print("vidanom.json and the current model disagree: " + "; ".join(lines) + f" ({then})", markup=False)


# -- fleet: many cameras on Ray -------------------------------------------------------------------

fleet = typer.Typer(no_args_is_help=True, rich_markup_mode=None)
app.add_typer(fleet, name="fleet")

ManifestArg = Annotated[Path, typer.Argument(help="The fleet manifest (TOML): [cameras.NAME] tables.")]
AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar="RAY_ADDRESS",
        help="A running Ray cluster to join (HOST:PORT or auto); default: a local Ray on this machine's cores.",
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option(min=1, help="Workers at once (default: as many as the engine's CPUs hold).")
]
CpusOpt = Annotated[float, typer.Option(min=0.01, help="CPUs a worker reserves (its torch threads).")]
GpusOpt = Annotated[
    float, typer.Option(min=0.0, help="GPUs a worker reserves (fractions share one GPU); with any, workers use CUDA.")
]


@fleet.callback()
def fleet_main() -> None:
    """Many cameras at once, on Ray: a manifest lists each camera's project and footage.

    By default a local Ray runs on this machine's cores; --address joins a cluster.

    Example: vidanom fleet score cameras.toml
    """


def _engine(address: str | None, workers: int | None, cpus: float, gpus: float) -> Any:
    from .fleet.engine import Engine

    return Engine(address, workers, cpus, gpus)


def _manifest(path: Path) -> Any:
    from .fleet.manifest import read_manifest

    return read_manifest(path)


def _fail(lines: list[str]) -> None:
    """One 'error:' line each; a non-zero exit when there is any (the rest was done)."""
    for line in lines:
        err.print(f"error: {_one_line(line)}", markup=False, highlight=False, soft_wrap=True)
    if lines:
        raise typer.Exit(2)


@fleet.command(name="train")
@cli_errors(interrupted=RESUMABLE)
def fleet_train(
    manifest: ManifestArg,
    steps: Annotated[
        int | None, typer.Option(min=1, help="Optimiser steps for each stage at most (overrides the configs).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the cameras' interrupted training runs.")] = False,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
) -> None:
    """Train every camera's project, one Ray task per camera (a missing project folder is created).

    Example: vidanom fleet train cameras.toml --address 10.0.0.1:6379
    """
    from .fleet.training import train_fleet

    with _progress() as progress:
        r = train_fleet(
            _manifest(manifest), _engine(address, workers, cpus_per_worker, gpus_per_worker), steps, resume, progress
        )
    table = Table("camera", "version", "clips", "frames", "seconds", "threshold (false alarms)")
    for c in r.cameras:
        fa = "" if c.false_alarms is None else f" ({100 * c.false_alarms:.1f}%)"
        threshold = "-" if c.threshold is None else f"{c.threshold:.2f}{fa}"
        table.add_row(c.camera, c.version or "failed", str(c.clips), str(c.frames), f"{c.seconds:.0f}", threshold)
    out.print(table)
    out.print(f"{len(r.cameras) - len(r.failed)} of {len(r.cameras)} camera(s) trained in {r.seconds:.0f} s")
    _fail(r.problems + [f"camera {c.camera}: {c.error}" for c in r.failed])


@fleet.command(name="score")
@cli_errors
def fleet_score(
    manifest: ManifestArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for events.csv and events.json (default: the manifest's)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Score again clips the current model has already scored.")] = False,
    address: AddressOpt = None,
    workers: WorkersOpt = None,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
) -> None:
    """Score every camera's clips on Ray workers; one events table of every camera.

    Each clip's CSV, JSON and timeline go into its camera's project, as 'vidanom score' writes them.
    Clips the current model has scored are skipped; a clip that fails is listed at the end.

    Example: vidanom fleet score cameras.toml -o today
    """
    from .fleet.scoring import score_fleet

    engine = _engine(address, workers, cpus_per_worker, gpus_per_worker)
    with _progress() as progress:
        r = score_fleet(_manifest(manifest), engine, force, output, progress)
    table = Table("camera", "scored", "skipped", "failed", "frames", "events")
    for t in r.totals():
        table.add_row(t.camera, *map(str, (t.scored, t.skipped, t.failed, t.frames, t.events)))
    out.print(table)
    rate = "" if r.rate is None else f" ({r.rate:.0f} frames/s)"
    out.print(f"{len(r.scored)} clip(s) scored by {r.workers} worker(s) in {r.seconds:.1f} s{rate}")
    out.print(f"{len(r.events)} event(s) in {r.csv} and {r.json}", markup=False, highlight=False)
    for c in r.clips:
        if c.warning:
            _say(f"warning: camera {c.camera}: {c.clip}: {_one_line(c.warning)}")
    _fail(r.problems + [f"camera {c.camera}: {c.clip}: {c.error}" for c in r.failed])


@fleet.command(name="status")
@cli_errors
def fleet_status(manifest: ManifestArg) -> None:
    """Each camera's project, model version, and clips scored by it or still to score; a problem
    with the manifest (an unknown key, a missing project, a glob that matches nothing) is an error
    line each, after the table, and exit code 2.

    Example: vidanom fleet status cameras.toml
    """
    from .fleet.overview import fleet_status as status_of

    cameras, problems = status_of(_manifest(manifest))
    table = Table("camera", "project", "version", "cached clips", "train videos", "to score", "scored", "pending")
    for c in cameras:
        table.add_row(
            c.camera,
            str(c.project),
            c.version or "-",
            str(c.cached),
            str(c.train),
            str(c.score),
            str(c.scored),
            str(c.pending),
        )
    out.print(table)
    _fail(problems + [f"camera {c.camera}: {p}" for c in cameras for p in c.problems])


@fleet.command(name="report")
@cli_errors
def fleet_report(
    manifest: ManifestArg,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for index.html (default: report/ by the manifest).")
    ] = None,
    videos: Annotated[bool, typer.Option(help="Also make the annotated video of every clip with events.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """One HTML page of every camera's scored clips.

    Example: vidanom fleet report cameras.toml -o report
    """
    from .fleet.overview import fleet_report as report_of

    with _progress() as progress:
        r, problems = report_of(_manifest(manifest), output, videos, _device(device), progress)
    made = ", ".join(f"{n} {kind}" for kind, n in r.made.items() if n) or "nothing new"
    out.print(
        f"wrote {r.index}: {r.cameras} camera(s), {r.clips} clips, {r.events} events ({made} made)",
        markup=False,
        highlight=False,
    )
    for note in r.notes:
        _say(f"note: {_one_line(note)}")
    _fail(problems)


class _FleetView:
    """What `fleet watch` shows: events and gaps as JSON lines (with the camera's name) on stdout, and
    on a terminal a live table of the cameras."""

    def __init__(self) -> None:
        from rich.live import Live

        self.live = Live(console=out, transient=True, auto_refresh=False) if out.is_terminal else None

    def item(self, item: dict[str, Any]) -> None:
        _json_line(self.live, item)

    def change(self, states: list[Any]) -> None:
        if self.live is not None:
            self.live.update(self.table(states), refresh=True)

    @staticmethod
    def table(states: list[Any]) -> Table:
        table = Table("camera", "state", "frames/s", "latency", "dropped", "events", "last score", "outputs")
        for s in states:
            st = s.status or {}
            fps = st.get("frames", 0) / st["seconds"] if st.get("seconds") else 0.0
            score = st.get("score")
            table.add_row(
                s.camera,
                _FleetView.state(s),
                f"{fps:.1f}",
                f"{st.get('latency', 0.0):.2f} s",
                str(st.get("dropped", 0)),
                str(st.get("events", 0)),
                "-" if score is None or score != score else f"{score:.2f}",
                _outputs_line(st.get("outputs") or {}, short=True),
            )
        return table

    @staticmethod
    def state(s: Any) -> str:
        """A camera's state; while its stream is lost, for how long and why."""
        st = s.status or {}
        text = s.state
        if s.state == "reconnecting":
            text = f"DOWN {st.get('down', 0.0):.0f} s ({st.get('reason', '')})"
        return text + (f" (restarted {s.restarts}x)" if s.restarts else "")


@fleet.command(name="watch")
@cli_errors
def fleet_watch(
    manifest: ManifestArg,
    max_latency: MaxLatencyOpt = 2.0,
    reconnect: Annotated[
        bool | None,
        typer.Option(
            "--reconnect/--no-reconnect",
            help="Open a stream again when it ends or breaks (default: on for URLs and cameras, off for files).",
            show_default=False,
        ),
    ] = None,
    address: AddressOpt = None,
    cpus_per_worker: CpusOpt = 1.0,
    gpus_per_worker: GpusOpt = 0.0,
    clips: ClipsOpt = None,
    pre: PreOpt = None,
    post: PostOpt = None,
    max_clip: MaxClipOpt = None,
    keep: KeepOpt = None,
    keep_size: KeepSizeOpt = None,
    exec_: ExecOpt = None,
    webhook: WebhookOpt = None,
    mqtt: MqttOpt = None,
    ha_discovery: HaOpt = None,
    cooldown: CooldownOpt = None,
    strict_outputs: StrictOpt = None,
) -> None:
    """Watch every camera's live source at once: one Ray actor per camera, one JSON line per event.

    Each line is the event (or health record) 'vidanom watch' prints, with its "camera". A file
    given as a camera's live source plays at its own rate. The event outputs (--clips, --exec,
    --webhook, --mqtt...) are fleet-wide here, over the manifest's [watch] table; a camera's own
    keys win. Ctrl-C stops every camera (exit code 0).

    Example: vidanom fleet watch cameras.toml --clips clips --mqtt mqtt://127.0.0.1 --ha-discovery
    """
    from .fleet.watching import watch_fleet
    from .watch import WatchOptions

    if not max_latency > 0:
        raise typer.BadParameter("--max-latency must be a positive number of seconds")
    flags = _output_flags(
        clips=clips.resolve() if clips is not None else None,
        pre=pre,
        post=post,
        max_clip=max_clip,
        keep=keep,
        keep_size=keep_size,
        exec_=exec_,
        webhook=webhook,
        mqtt=mqtt,
        ha_discovery=ha_discovery,
        cooldown=cooldown,
        strict=strict_outputs,
    )
    view = _FleetView()
    engine = _engine(address, None, cpus_per_worker, gpus_per_worker)
    with view.live if view.live is not None else nullcontext():
        states, problems = watch_fleet(
            _manifest(manifest),
            engine,
            WatchOptions(max_latency=max_latency, reconnect=reconnect),
            view.item,
            view.change,
            outputs=flags,
        )
    for s in states:
        st = s.status or {}
        _say(
            f"camera {s.camera}: {s.state}: {st.get('frames', 0)} frames scored, {st.get('dropped', 0)} dropped, "
            f"{st.get('events', 0)} event(s)" + (f", restarted {s.restarts} time(s)" if s.restarts else "")
        )
        if st.get("outputs"):
            _say(f"camera {s.camera}: outputs: {_outputs_line(st['outputs'])}")
        for warning in (st.get("outputs") or {}).get("warnings", []):
            _say(f"camera {s.camera}: warning: {warning}")
    _fail(problems + [f"camera {s.camera}: {s.error}" for s in states if s.error])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
