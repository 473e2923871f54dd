"""Typed errors. Library code raises these; only the CLI turns them into a message and an exit code."""

from __future__ import annotations


class VidanomError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class VideoError(VidanomError):
    """A video or frame folder is missing, unreadable or empty."""


class ProjectError(VidanomError):
    """The folder is not a project, or its files are damaged or from a newer vidanom."""


class ConfigError(ProjectError):
    """The project's config cannot be read or does not fit the saved model."""


class NotTrainedError(VidanomError):
    """A command needs a model that has not been trained yet."""


class LabelsError(VidanomError):
    """A labels file cannot be read or does not match the scored clips."""


class LockError(VidanomError):
    """Another vidanom command is writing to the same project."""

    exit_code = 3


class OutputError(VidanomError):
    """An event output (clips folder, webhook, MQTT broker, command) is misconfigured or unreachable."""
