"""Typed errors. The command-line tools turn them into one line and a non-zero exit code."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class SourceUnavailable(OSError):
    """A camera, file or stream cannot be opened or read."""


class SinkUnavailable(OSError):
    """An output (virtual camera, window, file) cannot be opened or written."""


class BadArgument(ValueError):
    """A flag's value is malformed; the message says what is accepted."""


def run_cli(run: Callable[[], int]) -> int:
    """Run a command-line tool's body; typed errors become one line on stderr and an exit
    code: 2 for a bad argument, 1 for what could not be opened or run, 130 for Ctrl-C."""
    from engines.segmenter import BackendMissing, EngineError

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return run()
    except BadArgument as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (SourceUnavailable, SinkUnavailable, BackendMissing, EngineError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
