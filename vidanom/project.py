"""The project directory: where everything lives, the write lock, and model versions.

    vidanom.json        config with schema version
    cache/              frame caches (one .u8 + .t + .json per clip: frames, their times, description)
    models/v0001/       a finished model version: model.pt (everything, see detector.Detector) and
                        version.json (its lineage, for people and `status`); versions written before
                        model.pt existed hold vae.pt, mdn.pt, calibration.pt, ewc.pt, prior.pt instead
    models/current      name of the version in use (written atomically)
    models/.partial/    the resumable state of a train/update that has not finished (run.json says which)
    scores/             per clip: CSV, JSON summary, timeline PNG
    lock                PID and command of the process training or updating the project

Only training and updating take the lock: extracting and scoring write each file atomically, so
they run beside each other, and beside a training, in as many processes as wanted (the frame size
that the first extract of a project with frames.width 0 sets is written under a brief flock).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import fsutil
from .config import CONFIG_NAME, ProjectConfig, read_config, to_dict, validate
from .errors import LockError, NotTrainedError, ProjectError

ENV_VAR = "VIDANOM_PROJECT"
STALE_UNREADABLE_LOCK = 10.0  # seconds after which a lock file without a readable PID counts as stale
LOCK_WAIT = 5.0  # seconds a train or update waits for a project another one is writing to


@contextmanager
def _folder_mutex(folder: Path) -> Iterator[None]:
    """An flock on the folder itself, for the few milliseconds a process decides about the lock."""
    try:
        import fcntl
    except ImportError:  # not on a POSIX system: no mutex, the link still makes taking the lock atomic
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Project:
    root: Path
    config: ProjectConfig

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def scores_dir(self) -> Path:
        return self.root / "scores"

    @property
    def partial_dir(self) -> Path:
        return self.models_dir / ".partial"

    @classmethod
    def init(cls, root: Path, config: ProjectConfig | None = None) -> Project:
        config = config or ProjectConfig()
        validate(config)
        if (root / CONFIG_NAME).exists():
            raise ProjectError(f"{root} is already a vidanom project")
        for sub in ("cache", "models", "scores"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        project = cls(root, config)
        project.save_config()
        return project

    @classmethod
    def open(cls, root: Path) -> Project:
        if not (root / CONFIG_NAME).is_file():
            raise ProjectError(
                f"{root} is not a vidanom project (no {CONFIG_NAME}); run 'vidanom init' or pass --project DIR"
            )
        return cls(root, read_config(root / CONFIG_NAME))

    @classmethod
    def find(cls, explicit: Path | None = None) -> Project:
        """The project named by --project, else $VIDANOM_PROJECT, else the current directory."""
        root = explicit or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else Path.cwd())
        return cls.open(root)

    def save_config(self) -> None:
        fsutil.write_json(self.root / CONFIG_NAME, to_dict(self.config))

    def resolve_width(self, source_width: int, source_height: int) -> None:
        """Set a frames.width of 0 from a clip's size (FrameConfig.resolved), in this config and in the
        one on disk (with nothing else that a command may have changed for its own run only).

        Extracting takes no lock, so this happens under an flock of the project folder: of two
        commands that both read width 0, the second takes the width the first wrote (its frames,
        cached at another width, would otherwise be left out of every later run).
        """
        with _folder_mutex(self.root):
            on_disk = read_config(self.root / CONFIG_NAME)
            width = on_disk.frames.width or self.config.frames.resolved(source_width, source_height).width
            if not on_disk.frames.width:
                fsutil.write_json(
                    self.root / CONFIG_NAME, to_dict(replace(on_disk, frames=replace(on_disk.frames, width=width)))
                )
        self.config = replace(self.config, frames=replace(self.config.frames, width=width))

    def edit_config(self, change: Callable[[ProjectConfig], ProjectConfig]) -> ProjectConfig:
        """Rewrite vidanom.json as change(the config on disk) (checked first; ConfigError), under an
        flock of the project folder, as resolve_width does; this project's config becomes it."""
        with _folder_mutex(self.root):
            config = change(read_config(self.root / CONFIG_NAME))
            validate(config)
            fsutil.write_json(self.root / CONFIG_NAME, to_dict(config))
        self.config = config
        return config

    # -- the write lock ---------------------------------------------------------------------------

    @contextmanager
    def writing(self, command: str, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the write lock for `command` and defer Ctrl-C to the end of the current optimiser
        step (see interrupt): what every train and update runs under, from the CLI or a library."""
        from . import interrupt

        with self.lock(command, wait), interrupt.deferred():
            yield

    @contextmanager
    def lock(self, command: str, wait: float = LOCK_WAIT) -> Iterator[None]:
        """Hold the project's write lock; wait up to `wait` seconds, take over a dead process's lock.

        The lock file appears with its content in one step (a hard link of a written temporary
        file), so no other process ever reads it half-written; deciding that a lock is stale and
        replacing it happens under an flock of the project folder, so two processes cannot both
        take over the same stale lock.
        """
        path = self.root / "lock"
        mine = {"pid": os.getpid(), "command": command, "started": time.time()}
        deadline = time.monotonic() + wait
        while True:
            holder = self._try_lock(path, mine)
            if holder is None:
                break
            if time.monotonic() > deadline:
                raise LockError(
                    f"project is busy: 'vidanom {holder.get('command', '?')}' "
                    f"(pid {holder.get('pid', '?')}) is writing to it; try again when it ends"
                )
            time.sleep(0.2)
        try:
            self._remove_leftovers()
            yield
        finally:
            if (self._lock_holder(path) or {}).get("pid") == os.getpid():
                path.unlink(missing_ok=True)

    def _try_lock(self, path: Path, mine: dict[str, Any]) -> dict[str, Any] | None:
        """Take the lock and return None, or return the live holder's lock data."""
        tmp = path.with_name(f".lock.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(mine))
        try:
            with _folder_mutex(self.root):
                try:
                    os.link(tmp, path)  # fails if the lock exists: atomic test-and-set, content included
                    return None
                except FileExistsError:
                    pass  # held: who holds it is looked at below
                except OSError:  # a file system without hard links
                    try:
                        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                    except FileExistsError:
                        pass  # held, as above
                    else:
                        with os.fdopen(fd, "w") as f:
                            json.dump(mine, f)
                        return None
                holder = self._lock_holder(path)
                if holder is not None and _pid_alive(holder["pid"]):
                    return holder
                if holder is None and self._lock_age(path) < STALE_UNREADABLE_LOCK:
                    return {"pid": "?", "command": "?"}  # being written by an older vidanom this instant
                os.replace(tmp, path)  # stale: its process is gone; take it over in one step
                return None
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _lock_holder(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    @staticmethod
    def _lock_age(path: Path) -> float:
        try:
            return time.time() - path.stat().st_mtime
        except OSError:
            return float("inf")

    def _remove_leftovers(self) -> None:
        """Delete what writers killed midway left behind: staging folders and temporary files of
        processes that are gone (extracting and scoring, which take no lock, may be writing others).

        Only called with the write lock held.
        """
        for staging in self.models_dir.glob(".staging-*"):
            pid = staging.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or (int(pid) != os.getpid() and not _pid_alive(int(pid))):
                shutil.rmtree(staging, ignore_errors=True)
        for folder in (self.models_dir, self.partial_dir, self.cache_dir, self.scores_dir):
            for tmp in folder.glob(".*.tmp"):
                if fsutil.leftover(tmp):
                    tmp.unlink(missing_ok=True)
        for tmp in self.root.glob(".lock.*.tmp"):  # another process's lock data, before it linked it
            pid = tmp.name.split(".")[2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def interrupted_run(self) -> dict[str, Any] | None:
        """What the unfinished run in models/.partial was (command, scene, parent), if there is one."""
        if not self.partial_dir.is_dir():
            return None
        try:
            run = json.loads((self.partial_dir / "run.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            run = None
        return run if isinstance(run, dict) else {}

    # -- an unfinished train/update run -------------------------------------------------------------

    def begin_run(self, identity: dict[str, Any], resume: bool) -> None:
        """Prepare models/.partial for a run; with resume, check it holds the same run's checkpoints.

        identity names what the run fits (command, scene, parent version, clips, architecture,
        seed): resuming one run's checkpoints into another would silently mix them.
        """
        part = self.partial_dir
        identity = json.loads(json.dumps(identity))  # tuples as lists, as they come back from disk
        if resume and (part / "run.json").is_file():
            try:
                before = json.loads((part / "run.json").read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                before = None
            if before != identity:
                what = (
                    "a different run"
                    if not isinstance(before, dict)
                    else f"'{before.get('strategy', '?')}' of scene '{before.get('scene', '?')}' "
                    f"from {before.get('parent') or 'scratch'}"
                )
                raise ProjectError(
                    f"the interrupted run in {part} was {what}, with other clips or settings; "
                    "resume it with the same command and options, or run without --resume "
                    "to start afresh"
                )
        elif not resume or not part.exists():
            shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True, exist_ok=True)
        fsutil.write_json(part / "run.json", identity)

    # -- model versions ---------------------------------------------------------------------------

    def current_version(self) -> str | None:
        path = self.models_dir / "current"
        if not path.is_file():
            return None
        name = path.read_text().strip()
        return name if (self.models_dir / name / "version.json").is_file() else None

    def require_version(self) -> Path:
        name = self.current_version()
        if name is None:
            raise NotTrainedError("no trained model in this project yet; run 'vidanom train VIDEO...' first")
        return self.models_dir / name

    def versions(self) -> list[dict[str, Any]]:
        out = []
        for d in sorted(self.models_dir.glob("v[0-9]*")):
            try:
                out.append(json.loads((d / "version.json").read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def lineage(self, version: str | None = None) -> list[dict[str, Any]]:
        """The version.json of a version (default: the current one) and of its parent, its parent's
        parent... newest first; [] before the first version."""
        chain: list[dict[str, Any]] = []
        name = version or self.current_version()
        while name and name not in [c.get("version") for c in chain]:
            try:
                info = json.loads((self.models_dir / name / "version.json").read_text())
            except (OSError, json.JSONDecodeError):
                break
            chain.append({"version": name, **info})
            name = info.get("parent")
        return chain

    def accepted_keys(self) -> set[str]:
        """The cache keys of the stretches accepted as normal by the current version or one it came
        from: the scene's footage holds these, not those of a version that is no longer current."""
        return {str(a["key"]) for info in self.lineage() for a in info.get("accepted") or [] if "key" in a}

    def use_version(self, name: str, wait: float = LOCK_WAIT) -> str | None:
        """Make an existing version current again (undo an accept or an update); returns the version
        that was current. Takes the write lock: no train or update publishes meanwhile."""
        if not re.fullmatch(r"v[0-9]+", name) or not (self.models_dir / name / "version.json").is_file():
            known = ", ".join(str(v.get("version")) for v in self.versions()) or "none yet"
            raise ProjectError(f"no model version '{name}' in this project (its versions: {known})")
        with self.lock("use", wait):
            before = self.current_version()
            fsutil.write_text(self.models_dir / "current", name + "\n")
        return before

    def next_version_name(self) -> str:
        numbers = [int(d.name[1:]) for d in self.models_dir.glob("v[0-9]*") if d.name[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1:04d}"

    def publish_version(self, write: Callable[[Path], None], info: dict[str, Any]) -> str:
        """Write a new version into a staging folder (write(folder) and info as version.json, both
        with the version's name in info), move it into place, then point `current` at it.

        Until the last rename the previous version stays current, so a crash loses nothing.
        """
        name = self.next_version_name()
        info["version"] = name
        staging = self.models_dir / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        write(staging)
        fsutil.write_json(staging / "version.json", info)
        os.replace(staging, self.models_dir / name)
        fsutil.write_text(self.models_dir / "current", name + "\n")
        return name
