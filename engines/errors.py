"""Typed errors, each a builtin's subclass. `engines.cli.run_cli` turns them into one line."""
from __future__ import annotations


class BadArgument(ValueError):
    """A flag's value is malformed; the message says what is accepted."""


class BackendMissing(ImportError):
    """A backend's library or device is not there; the message names what to install."""


class EngineError(RuntimeError):
    """A backend is installed but cannot run this model."""


class UnusableInput(OSError):
    """An input file exists but does not hold what the command needs (the wrong format)."""
