"""What every command shares: one error path, the model flags, and sizes written WIDTHxHEIGHT.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return run_cli(lambda: run(args))

Exit codes, the same in every command: 0 done, 2 a bad argument (argparse's own errors
included), 1 something that could not be opened or run (a missing file, camera, backend or
model), 130 Ctrl-C. The cause is printed as one line, never a traceback.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable

from engines.errors import BackendMissing, BadArgument, EngineError
from engines.models import DEFAULT_MODEL
from engines.segmenter import BACKENDS


def run_cli(run: Callable[[], int | None]) -> int:
    """Run a command's body; typed errors become one line on stderr and the exit code above."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        return run() or 0
    except BadArgument as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, BackendMissing, EngineError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class StopRequest:
    """Ctrl-C as a request to stop between two frames, so that no frame is cut in half.

    While the block runs (in the main thread), the first SIGINT only sets `requested`: the
    loop finishes the frame in hand, writes it, and stops. A second SIGINT raises
    KeyboardInterrupt at once, for a loop stuck waiting. Elsewhere it changes nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._installed = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False


def add_model_arguments(parser: argparse.ArgumentParser, model: str = DEFAULT_MODEL) -> None:
    """`--model` (defaulting to `model`), `--backend` and `--threads`, as every command that runs
    the network takes them."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=model,
                       help="a shipped model's name or a .safetensors/.onnx file (default: %(default)s)")
    group.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                       help="auto takes the best that opens and logs why the others did not (default: %(default)s)")
    group.add_argument("--threads", type=positive_int, default=2, help="CPU threads for the network (default: %(default)s)")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


LARGEST_SIZE = (7680, 4320)  # 8K UHD: beyond what cameras deliver and codecs take


def parse_size(text: str) -> tuple[int, int]:
    """`1280x720` → (1280, 720): width, then height, positive, even and at most 8K."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise BadArgument(f"bad size {text!r}: use WIDTHxHEIGHT, for example 1280x720") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise BadArgument(f"bad size {text!r}: width and height must be positive and even")
    if width > LARGEST_SIZE[0] or height > LARGEST_SIZE[1]:
        raise BadArgument(f"bad size {text!r}: at most {LARGEST_SIZE[0]}x{LARGEST_SIZE[1]} (8K)")
    return width, height
