"""The HTML report of scored clips: `vidanom report`. See build.py for what it writes."""

from __future__ import annotations

from .build import Report, build_report

__all__ = ["Report", "build_report"]
