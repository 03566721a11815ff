"""The on-disk cache of compiled TensorRT engines, keyed by everything that makes one valid.

    python -c "from engines.engine_cache import cache_directory; print(cache_directory())"

An engine is executable code for one GPU model and one TensorRT version, so it is loaded only
from the cache directory, under a name derived from its key, and only after its sidecar
metadata matches the key and the engine file matches the sha256 recorded there. Anything else
(a missing sidecar, another TensorRT version, a truncated file, an engine TensorRT refuses) is
a reason to rebuild, logged in one line. This module is plain Python: TensorRT enters only
through the `deserialize` and `build` callables given to `EngineCache.load_or_build`.

Layout, in ~/.cache/tiramisu-stream/engines, $TIRAMISU_CACHE, or a directory given by the caller:

    <key digest>.engine      the serialized engine
    <key digest>.json        its key fields, size, sha256 and build time
    timing-<device>.cache    TensorRT's timing cache for one GPU model and TensorRT version
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from engines.errors import EngineError

log = logging.getLogger("engines")

CACHE_ENV = "TIRAMISU_CACHE"
T = TypeVar("T")


def cache_directory(override: Path | str | None = None) -> Path:
    """`override`, else $TIRAMISU_CACHE, else ~/.cache/tiramisu-stream/engines."""
    chosen = override or os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return Path.home() / ".cache" / "tiramisu-stream" / "engines"


def file_sha256(path: Path | str) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; any change means another engine."""

    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str
    onnx_sha256: str
    input_shape: tuple[int, ...]
    precision: str  # "fp16" or "fp32"

    def fields(self) -> dict[str, object]:
        """The key as it reads back from JSON (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:32]

    def device_digest(self) -> str:
        """What a timing cache depends on: the GPU model and the TensorRT version."""
        device = [self.gpu_name, list(self.compute_capability), self.tensorrt_version]
        return hashlib.sha256(json.dumps(device).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{'x'.join(map(str, self.input_shape))} {self.precision} on {self.gpu_name}"


def entry_problem(key: EngineKey, metadata_text: str | None, engine: bytes | None) -> str | None:
    """Why a cached engine cannot be used for `key`, or None when it can."""
    if metadata_text is None:
        return "its metadata file is missing"
    try:
        metadata = json.loads(metadata_text)
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        return "its metadata is not a JSON object"
    for name, expected in key.fields().items():
        if metadata.get(name) != expected:
            return f"it was built for {name} {metadata.get(name)!r}, not {expected!r}"
    if engine is None:
        return "the engine file is missing"
    if metadata.get("engine_sha256") != hashlib.sha256(engine).hexdigest():
        return "the engine file does not match its recorded sha256 (truncated or corrupt)"
    return None


@dataclass(frozen=True)
class CacheEntry:
    engine: bytes | None  # the serialized engine, only when it passed every check
    problem: str | None  # why an entry that exists cannot be used


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


@dataclass(frozen=True)
class EngineCache:
    directory: Path

    def engine_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.digest()}.engine"

    def metadata_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.digest()}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.directory / f"timing-{key.device_digest()}.cache"

    def read(self, key: EngineKey) -> CacheEntry:
        """The cached engine for `key` if it checks out; else why not (no problem when there is none)."""
        metadata, engine = _read(self.metadata_path(key)), _read(self.engine_path(key))
        if metadata is None and engine is None:
            return CacheEntry(None, None)
        problem = entry_problem(key, metadata.decode("utf-8", "replace") if metadata is not None else None, engine)
        return CacheEntry(engine if problem is None else None, problem)

    def write(self, key: EngineKey, engine: bytes, build_seconds: float) -> None:
        """Store an engine, then its metadata: the metadata is written last, as the commit record."""
        atomic_write(self.engine_path(key), engine)
        metadata = {
            **key.fields(),
            "engine_bytes": len(engine),
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
            "build_seconds": round(build_seconds, 2),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write(self.metadata_path(key), json.dumps(metadata, indent=2).encode())

    def load_or_build(
        self,
        key: EngineKey,
        deserialize: Callable[[bytes], T | None],
        build: Callable[[bytes], tuple[bytes, bytes]],
    ) -> T:
        """The engine for `key`: deserialized from the cache, or built, stored and deserialized.

        `deserialize(serialized)` returns the engine, or None (or raises) for bytes it refuses.
        `build(timing_cache)` gets the stored timing cache (empty the first time) and returns the
        serialized engine and the updated timing cache.
        """
        entry = self.read(key)
        problem = entry.problem
        if entry.engine is not None:
            started = time.perf_counter()
            try:
                engine = deserialize(entry.engine)
            except Exception as error:  # TensorRT raises its own, undocumented exception types
                engine, problem = None, f"TensorRT could not deserialize it: {error}"
            if engine is not None:
                log.info("loaded TensorRT engine for %s from %s in %.2f s", key.describe(),
                         self.engine_path(key), time.perf_counter() - started)
                return engine
            problem = problem or "TensorRT could not deserialize it"
        if problem is None:
            log.info("building TensorRT engine for %s (first start only)…", key.describe())
        else:
            log.warning("rebuilding TensorRT engine for %s: the cached one is unusable (%s)", key.describe(), problem)
        started = time.perf_counter()
        serialized, timing_cache = build(_read(self.timing_cache_path(key)) or b"")
        seconds = time.perf_counter() - started
        self.write(key, serialized, seconds)
        atomic_write(self.timing_cache_path(key), timing_cache)
        log.info("built TensorRT engine for %s in %.1f s; cached in %s", key.describe(), seconds, self.directory)
        engine = deserialize(serialized)
        if engine is None:
            raise EngineError(f"TensorRT cannot deserialize the engine it just built for {key.describe()}")
        return engine
