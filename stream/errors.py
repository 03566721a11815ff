"""Typed errors. The command-line tools turn them into one line and a non-zero exit code."""
from __future__ import annotations


class SourceUnavailable(OSError):
    """A camera, file or stream cannot be opened or read."""


class SinkUnavailable(OSError):
    """An output (virtual camera, window, file) cannot be opened or written."""


class BadArgument(ValueError):
    """A flag's value is malformed; the message says what is accepted."""
