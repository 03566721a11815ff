"""The GPU path, checked on the CPU: the ONNX export and its agreement with PyTorch, the engine
cache (key, invalidation, atomic writes), and the backend choice when TensorRT is missing.
Tests marked `gpu` need a CUDA GPU (and TensorRT where they say so) and skip without one."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys

import numpy as np
import onnx
import pytest
import torch

from engines.engine_cache import CACHE_ENV, EngineCache, EngineKey, atomic_write, cache_directory, entry_problem
from engines.export import export_onnx, onnx_difference
from engines.metrics import batch_iou
from engines.errors import BackendMissing, EngineError
from engines.models import WEIGHTS_DIR, ModelFiles, resolve_model
from engines.segmenter import open_segmenter
from engines.tensorrt_backend import onnx_for_engine
from engines.tiramisu import load_weights
from stream.frames import preprocess
from stream.sources import DemoSource

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KEY = EngineKey("NVIDIA H200", (9, 0), "10.13.0", "ab" * 32, (1, 3, 144, 256), "fp16")


@pytest.fixture(scope="module")
def model():
    return load_weights(WEIGHTS_DIR / "compact.safetensors")


@pytest.fixture(scope="module")
def person() -> torch.Tensor:
    """A demo frame (the astronaut portrait) as a 1×3×144×256 network input."""
    frame = DemoSource((256, 144), 30.0, loop=False).read().image
    return preprocess(torch.from_numpy(frame), (144, 256))


def input_dims(path) -> list[int | str]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value or d.dim_param for d in dims]


# --- export --------------------------------------------------------------------------------------


def test_dynamic_export_passes_checker_and_matches_pytorch_at_several_shapes(model, tmp_path):
    path = export_onnx(model, tmp_path / "dynamic.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    assert input_dims(path) == ["batch", 3, "height", "width"]
    for shape in [(1, 144, 256), (2, 96, 160), (1, 288, 512)]:
        assert onnx_difference(model, path, shape) < 1e-4, shape


def test_fixed_export_passes_checker_and_matches_pytorch(model, tmp_path):
    path = export_onnx(model, tmp_path / "fixed.onnx", shape=(1, 144, 256))
    onnx.checker.check_model(str(path), full_check=True)
    assert input_dims(path) == [1, 3, 144, 256]
    assert onnx_difference(model, path, (1, 144, 256)) < 1e-4


def test_half_export_keeps_float32_io_and_agrees_with_pytorch(model, person, tmp_path):
    """What TensorRT 11 builds from: float16 inside, float32 in and out, the same matte."""
    import onnxruntime

    path = export_onnx(model, tmp_path / "half.onnx", half=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == float32
    assert proto.graph.output[0].type.tensor_type.elem_type == float32
    assert {w.data_type for w in proto.graph.initializer if len(w.dims) == 4} == {float16}  # conv weights
    assert onnx_difference(model, path, (1, 144, 256)) < 1e-2
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (alpha,) = session.run(["alpha"], {"image": person.numpy()})
    with torch.no_grad():
        expected = model.alpha(person)
    assert float(batch_iou(torch.from_numpy(alpha) > 0.5, expected > 0.5)[0]) > 99


def test_int8_export_runs_on_onnx_runtime_with_the_models_spec_and_the_same_matte(tmp_path, person):
    """`--int8 FOLDER`: calibrated on the folder's train images, the spec kept, the matte of
    the demo portrait close to PyTorch's (twelve calibration frames of one photo here; the
    shipped model, calibrated on 64 portraits, agrees at 99.4 % IoU)."""
    import cv2

    from engines.export import main as export_main

    folder = tmp_path / "calibration"
    (folder / "images").mkdir(parents=True)
    frames = DemoSource((320, 240), 30.0, loop=False)
    for index in range(120):
        image = frames.read().image
        if index % 10 == 0:
            cv2.imwrite(str(folder / "images" / f"{index}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (folder / "train.txt").write_text("\n".join(str(index) for index in range(0, 120, 10)) + "\n")
    weights = tmp_path / "m.safetensors"
    weights.write_bytes((WEIGHTS_DIR / "compact.safetensors").read_bytes())
    assert export_main([str(weights), "--int8", str(folder)]) == 0
    files = resolve_model(tmp_path / "m-int8.onnx")
    assert files.spec == resolve_model("compact").spec
    assert {node.op_type for node in onnx.load(str(files.onnx)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    segmenter = open_segmenter("onnxruntime", str(files.onnx))
    with torch.no_grad():
        expected = load_weights(weights).alpha(person)
    agreement = float(batch_iou(segmenter(person) > 0.5, expected > 0.5)[0])
    assert agreement > 95, agreement
    assert export_main([str(weights), "--int8", str(folder)]) == 2  # exists: needs --overwrite
    assert export_main([str(weights), "--int8", str(folder), "--half", "--overwrite"]) == 2
    assert export_main([str(weights), "--int8", str(tmp_path / "missing"), "--overwrite"]) == 1


def test_an_int8_export_that_fails_its_check_writes_nothing(tmp_path, monkeypatch):
    import cv2

    import engines.export as export

    folder = tmp_path / "calibration"
    (folder / "images").mkdir(parents=True)
    cv2.imwrite(str(folder / "images" / "0.jpg"), cv2.cvtColor(DemoSource((320, 240), 30.0, False).read().image,
                                                                 cv2.COLOR_RGB2BGR))
    (folder / "train.txt").write_text("0\n")
    monkeypatch.setattr(export, "INT8_AGREEMENT", 101.0)  # no matte can pass
    assert export.main([str(WEIGHTS_DIR / "compact.safetensors"), "--int8", str(folder), "-o",
                        str(tmp_path / "out" / "m.onnx")]) == 1
    assert list((tmp_path / "out").iterdir()) == []


def test_tensorrt_onnx_is_exported_once_into_the_cache(tmp_path):
    files = resolve_model("compact")
    half, half_inside = onnx_for_engine(files, half=True, directory=tmp_path)
    assert half_inside and half.parent == tmp_path and half.name.endswith("-fp16.onnx")
    written = half.stat().st_mtime_ns
    assert onnx_for_engine(files, half=True, directory=tmp_path) == (half, True)
    assert half.stat().st_mtime_ns == written  # reused, not exported again
    # TensorRT 10 builds from the model's own float32 export; a bare .onnx is used as it is.
    assert onnx_for_engine(files, half=False, directory=tmp_path) == (files.onnx, False)
    bare = ModelFiles("bare", None, files.onnx)
    assert onnx_for_engine(bare, half=True, directory=tmp_path) == (files.onnx, False)


# --- engine cache --------------------------------------------------------------------------------


def test_cache_key_is_stable_and_changes_with_every_field():
    assert KEY.digest() == EngineKey(**dataclasses.asdict(KEY)).digest()
    changed = {
        "gpu_name": "NVIDIA GeForce RTX 4090",
        "compute_capability": (8, 9),
        "tensorrt_version": "11.0.0",
        "onnx_sha256": "cd" * 32,
        "input_shape": (1, 3, 288, 512),
        "precision": "fp32",
    }
    assert set(changed) == {field.name for field in dataclasses.fields(EngineKey)}
    digests = {KEY.digest()} | {dataclasses.replace(KEY, **{name: value}).digest() for name, value in changed.items()}
    assert len(digests) == 1 + len(changed)


def test_cache_layout_and_directory_choice(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    assert cache.engine_path(KEY) == tmp_path / f"{KEY.digest()}.engine"
    assert cache.metadata_path(KEY) == tmp_path / f"{KEY.digest()}.json"
    # One timing cache per GPU model and TensorRT version, shared by shapes and models.
    other_shape = dataclasses.replace(KEY, input_shape=(1, 3, 288, 512), onnx_sha256="cd" * 32)
    assert cache.timing_cache_path(other_shape) == cache.timing_cache_path(KEY)
    assert cache.timing_cache_path(dataclasses.replace(KEY, tensorrt_version="11.0.0")) != cache.timing_cache_path(KEY)

    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "tiramisu-stream" / "engines"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert cache_directory() == tmp_path / "from-env"
    assert cache_directory(tmp_path / "given") == tmp_path / "given"


def test_cache_round_trip_and_invalidation(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.read(KEY).engine is None and cache.read(KEY).problem is None  # nothing yet: a first build
    cache.write(KEY, b"serialized engine", build_seconds=12.5)
    assert cache.read(KEY).engine == b"serialized engine"
    metadata = json.loads(cache.metadata_path(KEY).read_text())
    assert metadata["build_seconds"] == 12.5 and metadata["input_shape"] == [1, 3, 144, 256]

    # Corrupt or truncated engine: caught by the recorded sha256, before TensorRT sees it.
    cache.engine_path(KEY).write_bytes(b"serialized eng")
    entry = cache.read(KEY)
    assert entry.engine is None and "sha256" in entry.problem

    # Metadata that names another TensorRT, or is not JSON, or is gone.
    cache.write(KEY, b"serialized engine", build_seconds=1.0)
    cache.metadata_path(KEY).write_text(json.dumps({**metadata, "tensorrt_version": "10.0.1"}))
    assert "tensorrt_version '10.0.1'" in cache.read(KEY).problem
    cache.metadata_path(KEY).write_text("{not json")
    assert "JSON" in cache.read(KEY).problem
    cache.metadata_path(KEY).unlink()
    assert "metadata" in cache.read(KEY).problem


def test_entry_problem_names_each_mismatched_field():
    engine = b"plan"
    good = {**KEY.fields(), "engine_sha256": hashlib.sha256(engine).hexdigest()}
    assert entry_problem(KEY, json.dumps(good), engine) is None
    for name, value in [("gpu_name", "Tesla T4"), ("compute_capability", [7, 5]), ("onnx_sha256", "00"),
                        ("input_shape", [1, 3, 288, 512]), ("precision", "fp32")]:
        problem = entry_problem(KEY, json.dumps({**good, name: value}), engine)
        assert problem is not None and name in problem
    assert "missing" in entry_problem(KEY, json.dumps(good), None)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "x.engine"
    atomic_write(path, b"old")
    assert path.read_bytes() == b"old"

    def interrupted(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, b"new, but never finished")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.engine"]


class Builds:
    """Stand-ins for TensorRT's builder and runtime: plain functions over bytes, not its API."""

    def __init__(self) -> None:
        self.timing_caches: list[bytes] = []

    def build(self, timing_cache: bytes) -> tuple[bytes, bytes]:
        self.timing_caches.append(timing_cache)
        return b"good engine", timing_cache + b"+timings"

    @staticmethod
    def deserialize(serialized: bytes) -> str | None:
        if serialized == b"raises":
            raise RuntimeError("engine plan file is incompatible with this version of TensorRT")
        return "engine" if serialized == b"good engine" else None


def test_first_build_then_load_from_cache(tmp_path, caplog):
    cache, builds = EngineCache(tmp_path), Builds()
    with caplog.at_level(logging.INFO, logger="engines"):
        assert cache.load_or_build(KEY, builds.deserialize, builds.build) == "engine"
    assert builds.timing_caches == [b""]
    assert "first start only" in caplog.text and "built TensorRT engine" in caplog.text
    assert cache.timing_cache_path(KEY).read_bytes() == b"+timings"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        assert cache.load_or_build(KEY, builds.deserialize, builds.build) == "engine"
    assert len(builds.timing_caches) == 1  # loaded, not built
    assert "loaded TensorRT engine" in caplog.text
    # Another shape on the same GPU builds with the timing cache the first build left.
    cache.load_or_build(dataclasses.replace(KEY, input_shape=(1, 3, 288, 512)), builds.deserialize, builds.build)
    assert builds.timing_caches[-1] == b"+timings"


@pytest.mark.parametrize("stored", [b"raises", b"refused"])
def test_engine_tensorrt_refuses_is_rebuilt_with_one_warning(tmp_path, caplog, stored):
    cache, builds = EngineCache(tmp_path), Builds()
    cache.write(KEY, stored, build_seconds=1.0)  # passes the hash check; TensorRT still refuses it
    with caplog.at_level(logging.INFO, logger="engines"):
        assert cache.load_or_build(KEY, builds.deserialize, builds.build) == "engine"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0].getMessage()
    assert "could not deserialize" in warnings[0].getMessage()
    assert cache.read(KEY).engine == b"good engine"


def test_corrupt_engine_is_rebuilt_without_reaching_tensorrt(tmp_path, caplog):
    cache, builds = EngineCache(tmp_path), Builds()
    cache.write(KEY, b"good engine", build_seconds=1.0)
    cache.engine_path(KEY).write_bytes(b"good eng")  # truncated
    seen: list[bytes] = []

    def deserialize(serialized: bytes):
        seen.append(serialized)
        return builds.deserialize(serialized)

    with caplog.at_level(logging.INFO, logger="engines"):
        assert cache.load_or_build(KEY, deserialize, builds.build) == "engine"
    assert seen == [b"good engine"]  # only the freshly built one
    assert [r.levelname for r in caplog.records].count("WARNING") == 1


def test_engine_that_cannot_be_deserialized_after_building_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="just built"):
        EngineCache(tmp_path).load_or_build(KEY, lambda serialized: None, lambda timing: (b"plan", b""))


# --- backend choice ------------------------------------------------------------------------------


@pytest.fixture
def without_tensorrt_or_gpu(monkeypatch):
    """Hide TensorRT from import (`import tensorrt` raises ImportError) and hide any GPU."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_picks_onnxruntime_and_says_why_better_backends_were_skipped(without_tensorrt_or_gpu, caplog):
    with caplog.at_level(logging.INFO, logger="engines"):
        segmenter = open_segmenter("auto")
    assert segmenter.name == "onnxruntime"
    (record,) = [r for r in caplog.records if r.name == "engines" and "runs model" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith("backend onnxruntime runs model compact")
    assert "tensorrt: tensorrt is not installed" in message and "pip install" in message
    assert "torch-cuda: no CUDA GPU" in message


def test_asking_for_tensorrt_without_it_names_the_library(without_tensorrt_or_gpu):
    with pytest.raises(BackendMissing, match="tensorrt is not installed"):
        open_segmenter("tensorrt")


# --- on a GPU ------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_agrees_with_pytorch_and_reloads_from_cache(person, tmp_path, caplog):
    pytest.importorskip("tensorrt")
    from engines.tensorrt_backend import TensorRTSegmenter

    files = resolve_model("compact")
    image = person.cuda()
    with caplog.at_level(logging.INFO, logger="engines"):
        alpha = TensorRTSegmenter.open(files, tmp_path)(image)
    assert "first start only" in caplog.text
    with torch.no_grad():
        expected = load_weights(files.safetensors).cuda().alpha(image)
    assert alpha.shape == (1, 1, 144, 256) and alpha.dtype == torch.float32 and alpha.is_cuda
    assert float((alpha - expected).abs().max()) < 0.05
    assert float(batch_iou(alpha > 0.5, expected > 0.5)[0]) > 99
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        again = TensorRTSegmenter.open(files, tmp_path)(image)
    assert "loaded TensorRT engine" in caplog.text and "building" not in caplog.text
    assert torch.equal(again, alpha)


@pytest.mark.gpu
@needs_gpu
def test_tensorrt_pads_a_short_batch_instead_of_building_another_engine(person, tmp_path, caplog):
    pytest.importorskip("tensorrt")
    from engines.tensorrt_backend import TensorRTSegmenter

    segmenter = TensorRTSegmenter.open(resolve_model("compact"), tmp_path)
    images = torch.cat([person.cuda()] * 3)
    full = segmenter(images)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines"):
        short = segmenter(images[:2])  # the last batch of a file
    assert "TensorRT engine" not in caplog.text  # neither built nor loaded
    assert short.shape == (2, 1, 144, 256)
    torch.testing.assert_close(short, full[:2])


@pytest.mark.gpu
@needs_gpu
def test_gpu_loop_keeps_frames_on_the_gpu_and_returns_the_frame_size(tmp_path, monkeypatch):
    from stream.backgrounds import open_background
    from stream.chain import MatteChain
    from stream.pipeline import FrameProcessor
    from stream.smoothing import TemporalSmoother
    from stream.timing import StageClock

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # TensorRT, where installed, builds into tmp_path
    segmenter = open_segmenter("auto")
    assert segmenter.device.type == "cuda"
    processor = FrameProcessor(MatteChain(segmenter, TemporalSmoother()), [open_background("green")])
    source = DemoSource((1280, 720), 30.0, loop=False)
    for _ in range(3):
        output = processor(source.read(), StageClock(segmenter.device))
    assert isinstance(output, np.ndarray) and output.shape == (720, 1280, 3) and output.dtype == np.uint8
