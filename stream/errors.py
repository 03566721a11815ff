"""Typed errors of the frame side; the network's are in `engines.errors`. Both are OSErrors,
which `engines.cli.run_cli` turns into one line and exit code 1."""
from __future__ import annotations


class SourceUnavailable(OSError):
    """A camera, file or stream cannot be opened or read."""


class SinkUnavailable(OSError):
    """An output (virtual camera, window, file) cannot be opened or written."""
