"""The project directory: where everything lives, the write lock, and model versions.

    vidanom.json        config with schema version
    cache/              frame caches (one .u8 + .json per clip)
    models/v0001/       a finished model version: vae.pt, mdn.pt, calibration.pt, version.json
    models/current      name of the version in use (written atomically)
    models/.partial/    the resumable state of a train/update that has not finished
    scores/             per clip: CSV, JSON summary, timeline PNG
    lock                PID and command of the process writing to the project
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fsutil
from .config import CONFIG_NAME, ProjectConfig, read_config, to_dict, validate
from .errors import LockError, NotTrainedError, ProjectError

ENV_VAR = "VIDANOM_PROJECT"


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
            raise ProjectError(f"{root} is not a vidanom project (no {CONFIG_NAME}); "
                               f"run 'vidanom init' or pass --project DIR")
        return cls(root, read_config(root / CONFIG_NAME))

    @classmethod
    def find(cls, explicit: Path | None = None) -> Project:
        """The project named by --project, else $VIDANOM_PROJECT, else the current directory."""
        root = explicit or (Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else Path.cwd())
        return cls.open(root)

    def save_config(self) -> None:
        fsutil.write_json(self.root / CONFIG_NAME, to_dict(self.config))

    # -- the write lock ---------------------------------------------------------------------------

    @contextmanager
    def lock(self, command: str, wait: float = 5.0) -> Iterator[None]:
        """Hold the project's write lock; wait up to `wait` seconds, take over a dead process's lock."""
        path = self.root / "lock"
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = self._lock_holder(path)
                if holder is None or not _pid_alive(holder.get("pid", -1)):
                    path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                if time.monotonic() > deadline:
                    raise LockError(f"project is busy: 'vidanom {holder.get('command', '?')}' "
                                    f"(pid {holder['pid']}) is writing to it; try again when it ends") from None
                time.sleep(0.2)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "command": command, "started": time.time()}, f)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    @staticmethod
    def _lock_holder(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
            return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None
        except (OSError, json.JSONDecodeError):
            # a lock being written this instant reads empty: treat it as held, briefly
            return {"pid": os.getpid(), "command": "?"} if path.exists() else None

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

    def next_version_name(self) -> str:
        numbers = [int(d.name[1:]) for d in self.models_dir.glob("v[0-9]*") if d.name[1:].isdigit()]
        return f"v{max(numbers, default=0) + 1:04d}"

    def publish_version(self, staging: Path, info: dict[str, Any]) -> str:
        """Move a fully written version folder into place, then point `current` at it.

        Until the last rename the previous version stays current, so a crash loses nothing.
        """
        name = self.next_version_name()
        info = {**info, "version": name}
        fsutil.write_json(staging / "version.json", info)
        os.replace(staging, self.models_dir / name)
        fsutil.write_text(self.models_dir / "current", name + "\n")
        return name

    def new_staging_dir(self) -> Path:
        path = self.models_dir / f".staging-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path
