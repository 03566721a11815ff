"""Work one step ahead: a worker thread runs a generator while the caller uses its items.

    frames = Ahead(segmented_frames(source), depth=1)   # the network runs on frame N+1 ...
    for frame in frames:                                # ... while the caller composites frame N
        ...
    frames.close()

The live loop and file mode use it to overlap the network with compositing and writing. The
torch, ONNX Runtime, OpenCV and FFmpeg calls on either side release the GIL, so the two
threads run on two cores. Items come in order; at most `depth` are made and not yet taken
(the worker begins the next one only when one is taken). What the generator raises is
raised by the iteration, after the items before it.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
_ITEM, _END, _ERROR = range(3)


class Ahead(Generic[T]):
    def __init__(self, items: Iterator[T], depth: int = 1, name: str = "ahead") -> None:
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(depth)  # the worker takes one before it makes an item
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterator[T]) -> None:
        try:
            while self._take_slot():
                try:
                    item = next(items)
                except StopIteration:
                    self._queue.put((_END, None))
                    return
                self._queue.put((_ITEM, item))
        except BaseException as error:  # handed to the caller's thread, which raises it
            self._queue.put((_ERROR, error))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # an abandoned generator's own clean-up runs here, in its thread

    def _take_slot(self) -> bool:
        """Wait until fewer than `depth` items wait (the next one is not begun before: a live
        frame is read only when it can be used), or the caller abandons the rest."""
        while not self._abandoned.is_set():
            if self._slots.acquire(timeout=0.05):
                return True
        return False

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._queue.get()
            self._slots.release()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        """Abandon what has not been taken and wait for the worker to stop (it finishes the
        item in hand first)."""
        self._abandoned.set()
        self._thread.join()
