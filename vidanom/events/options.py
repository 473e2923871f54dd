"""What a watch does with its events besides printing them: clips, notifications, and their limits.

One frozen record, OutputOptions, built from `watch`'s flags, from a fleet manifest's tables
(`[watch]` for the whole fleet, `[cameras.X]` for one camera), or by a library caller. `check`
refuses what can never work (a bad URL, a clips folder that cannot be written) with one line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import OutputError

MQTT_PORT = 1883
MQTT_PREFIX = "vidanom"  # topics are PREFIX/CAMERA/...
SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class OutputOptions:
    clips: Path | None = None  # save each event's clip and snapshot in clips/CAMERA/ (None: no clips)
    pre: float = 5.0  # seconds of video before an event's start (from the keyframe before them)
    post: float = 5.0  # seconds of video after its end
    max_clip: float = 120.0  # seconds a clip lasts at most, pre and post included (bounds disk and delay)
    keep_days: float | None = None  # delete clips older than this many days (None: keep)
    keep_bytes: int | None = None  # delete the oldest clips while a camera's clips take more (None: no cap)
    buffer_bytes: int = 64 * 2**20  # the encoded video kept for the pre-roll, at most (per camera)
    command: str | None = None  # a shell command run per event and health change, the JSON on its stdin
    webhook: str | None = None  # an http(s) URL the JSON is POSTed to
    mqtt: str | None = None  # mqtt://[USER:PASSWORD@]HOST[:PORT][/PREFIX]
    ha_discovery: bool = False  # announce each camera to Home Assistant (MQTT discovery) as a binary sensor
    cooldown: float = 0.0  # an event closer than this many seconds to the one notified before is merged
    queue: int = 100  # notifications waiting per output at most; beyond, the oldest are dropped (and counted)
    drain: float = 5.0  # seconds the clips being written, then the queued notifications, get when the watch ends
    strict: bool = False  # refuse to start when the webhook's host or the MQTT broker cannot be reached

    @property
    def notifies(self) -> bool:
        return bool(self.command or self.webhook or self.mqtt)

    @property
    def active(self) -> bool:
        return self.clips is not None or self.notifies


# manifest key -> field (the flags have the same names, with dashes)
KEYS = {
    "clips": "clips",
    "pre": "pre",
    "post": "post",
    "max_clip": "max_clip",
    "keep": "keep_days",
    "keep_size": "keep_bytes",
    "exec": "command",
    "webhook": "webhook",
    "mqtt": "mqtt",
    "ha_discovery": "ha_discovery",
    "cooldown": "cooldown",
    "queue": "queue",
    "drain": "drain",
    "strict": "strict",
}


def parse_size(text: str | int) -> int:
    """'500M', '20G', '1.5GB', '4096' (bytes) → bytes; K, M, G, T are powers of 1024."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
        if not match:
            raise OutputError(f"cannot read {text!r} as a size; write e.g. 500M or 20G")
        value, unit = float(match[1]), match[2]
    if value <= 0:
        raise OutputError(f"a size must be positive, not {text!r}")
    return int(value * SIZE_UNITS[unit])


def mqtt_address(url: str) -> tuple[str, int, str, str | None, str | None]:
    """mqtt://[USER:PASSWORD@]HOST[:PORT][/PREFIX] → (host, port, prefix, user, password)."""
    parts = urlsplit(url)
    try:
        port = parts.port or MQTT_PORT
    except ValueError as exc:
        raise OutputError(f"--mqtt {url}: {exc}") from exc
    if parts.scheme != "mqtt" or not parts.hostname:
        raise OutputError(f"--mqtt takes mqtt://HOST[:PORT][/PREFIX], not {url!r} (TLS, mqtts://, is not supported)")
    prefix = parts.path.strip("/") or MQTT_PREFIX
    if any(c in prefix for c in "+#") or parts.fragment or parts.query or url.endswith("#"):
        raise OutputError(f"--mqtt {url}: the topic prefix may not hold + or #")
    return parts.hostname, port, prefix, parts.username, parts.password


def http_address(url: str) -> tuple[str, int]:
    """An http(s) URL → (host, port)."""
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise OutputError(f"--webhook {url}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutputError(f"--webhook takes an http:// or https:// URL, not {url!r}")
    return parts.hostname, port


def check(options: OutputOptions) -> list[str]:
    """Refuse (OutputError, one line) what can never work; → warnings about what may not."""
    o = options
    if not (o.pre >= 0 and o.post >= 0 and o.cooldown >= 0 and o.drain >= 0):
        raise OutputError("--pre, --post, --cooldown and drain must be 0 or more seconds")
    if not o.max_clip > o.pre + o.post:
        raise OutputError(f"--max-clip ({o.max_clip:g} s) must be longer than --pre plus --post")
    if (o.keep_days is not None and not o.keep_days > 0) or o.queue < 1 or o.buffer_bytes < 2**20:
        raise OutputError("--keep must be a positive number of days, the queue and the buffer (1 MB) not smaller")
    if o.webhook:
        http_address(o.webhook)
    if o.mqtt:
        mqtt_address(o.mqtt)
    if o.ha_discovery and not o.mqtt:
        raise OutputError("--ha-discovery announces cameras over MQTT: give --mqtt too")
    warnings = []
    if o.command:
        try:
            program = shlex.split(o.command)[0]
        except (ValueError, IndexError) as exc:
            raise OutputError(f"--exec {o.command!r} is not a command line: {exc or 'empty'}") from exc
        if shutil.which(program) is None and "/" not in program:
            warnings.append(f"--exec: no program {program!r} on the PATH (a shell builtin is fine)")
    return warnings


def check_folder(folder: Path) -> None:
    """Create a clips folder, or refuse one that cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the clips folder {folder}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write to the clips folder {folder}: no permission; choose another --clips")


def from_table(table: dict[str, Any], base: Path, defaults: OutputOptions) -> OutputOptions:
    """A manifest table's output keys (see KEYS) over defaults; relative clips folders are relative
    to base. Raises OutputError for an unknown key or a value of the wrong kind."""
    changes: dict[str, Any] = {}
    kinds = {f.name: f.type for f in fields(OutputOptions)}
    for key, value in table.items():
        name = KEYS.get(key)
        if name is None:
            raise OutputError(f"unknown key {key!r}")
        changes[name] = _value(key, name, kinds[name], value, base)
    return replace(defaults, **changes)


def _value(key: str, name: str, kind: Any, value: Any, base: Path) -> Any:
    kind = str(kind)
    if name == "clips":
        if not isinstance(value, str) or not value:
            raise OutputError("clips must be a folder")
        return base / Path(value).expanduser()
    if name == "keep_bytes":
        return parse_size(value)
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise OutputError(f"{key} must be true or false")
        return value
    if "str" in kind:
        if not isinstance(value, str) or not value:
            raise OutputError(f"{key} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutputError(f"{key} must be a number")
    return int(value) if kind.startswith("int") else float(value)
