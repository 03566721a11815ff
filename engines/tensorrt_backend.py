"""TensorRT backend (NVIDIA GPUs): engines built from the ONNX export, cached on disk, run on
torch CUDA tensors.

    python -c "from engines.segmenter import open_segmenter; print(open_segmenter('tensorrt').name)"

One engine per input shape, built on the first call with that shape (the loop asks for one
network size per frame size) or loaded from `engines.engine_cache`. Precision: TensorRT 10
builds float16 kernels from the float32 ONNX file with the FP16 builder flag. TensorRT 11 has
no such flag and builds strongly typed networks only, so it builds from an ONNX file exported
with float16 weights and arithmetic inside and float32 input and output, which this module
exports into the cache directory once per weights file.

Inference binds the torch tensors' device pointers (`set_tensor_address`, no copies to or from
the host) and runs `execute_async_v3` on the segmenter's own CUDA stream, which is ordered
after and before torch's current stream with events (TensorRT warns against the legacy
default stream that torch uses unless told otherwise). The output buffer is allocated once per
shape; a batch smaller than one already compiled for the same image size (the last batch of
a file) is padded to it instead of compiling another engine. CUDA-graph capture is not done.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.engine_cache import EngineCache, EngineKey, cache_directory, file_sha256
from engines.errors import BackendMissing, EngineError
from engines.models import ModelFiles
from engines.tiramisu import InferenceSpec

log = logging.getLogger("engines")


def import_tensorrt():
    """The `tensorrt` module, or BackendMissing naming what to install."""
    try:
        import tensorrt
    except ImportError as error:
        raise BackendMissing(f"tensorrt is not installed ({error}); pip install 'tiramisu-stream[tensorrt]'") from None
    return tensorrt


def has_fp16_flag(trt) -> bool:
    """TensorRT 10 reaches float16 through a builder flag; TensorRT 11 removed it."""
    return hasattr(trt.BuilderFlag, "FP16")


def onnx_for_engine(files: ModelFiles, half: bool, directory: Path) -> tuple[Path, bool]:
    """The ONNX file to build from, and whether it computes in float16 inside.

    With `half`, the weights are exported once to a float16 ONNX file in `directory`, named by
    the weights' hash. Otherwise the model's own ONNX file is used, or a float32 export of its
    weights when it has none. A model with only an ONNX file gets that file either way.
    """
    if files.safetensors is not None and (half or files.onnx is None):
        precision = "fp16" if half else "fp32"
        path = directory / f"{files.name}-{file_sha256(files.safetensors)[:16]}-{precision}.onnx"
        if not path.is_file():
            from engines.export import export_onnx
            from engines.tiramisu import load_weights

            try:
                export_onnx(load_weights(files.safetensors), path, half=half)
            except ImportError as error:
                raise BackendMissing(f"exporting for TensorRT needs onnx ({error}); "
                                     "pip install 'tiramisu-stream[export]'") from None
        return path, half
    if files.onnx is None:
        raise EngineError(f"model {files.name} has neither .safetensors weights nor an .onnx export")
    return files.onnx, False


def _timing_cache(config, stored: bytes):
    """A timing cache from the stored bytes, or an empty one when there are none or TensorRT refuses them."""
    if stored:
        try:
            cache = config.create_timing_cache(stored)
        except Exception as error:  # TensorRT raises its own, undocumented exception types
            cache = None
            log.info("TensorRT refused the stored timing cache (%s); starting an empty one", error)
        if cache is not None:
            return cache
    return config.create_timing_cache(b"")


def build_serialized_engine(
    trt, logger, onnx: bytes, shape: tuple[int, ...], fp16_flag: bool, timing_cache: bytes
) -> tuple[bytes, bytes]:
    """Compile an ONNX model for one input shape → (serialized engine, updated timing cache).

    `fp16_flag` (TensorRT 10): a weakly typed network with float16 kernels allowed. Otherwise a
    strongly typed network, whose precision is the ONNX file's own.
    """
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 0 if fp16_flag or strongly_typed is None else 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse the ONNX model: {errors}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise EngineError(f"expected one input and one output, found {network.num_inputs} and {network.num_outputs}")
    config = builder.create_builder_config()
    if fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    image = network.get_input(0)
    declared = tuple(image.shape)
    if any(size < 0 for size in declared):
        profile = builder.create_optimization_profile()
        profile.set_shape(image.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    elif declared != shape:
        raise EngineError(f"the ONNX model's input is fixed at {declared}; asked for {shape}")
    config.set_timing_cache(_timing_cache(config, timing_cache), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError("TensorRT could not build an engine (its log above says why)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


@dataclass
class ShapeEngine:
    """An engine for one input shape, its execution context and its output buffer."""

    engine: object
    context: object
    input_name: str
    output: torch.Tensor


class TensorRTSegmenter:
    """Runs a Tiramisu compiled by TensorRT; input and output stay float32 CUDA tensors."""

    name = "tensorrt"

    def __init__(self, trt, onnx_path: Path, precision: str, cache: EngineCache, device: torch.device,
                 spec: InferenceSpec) -> None:
        self.trt = trt
        self.spec = spec
        self.onnx_path = onnx_path
        self.onnx_sha256 = file_sha256(onnx_path)
        self.precision = precision
        self.cache = cache
        self.device = device
        self.fp16_flag = has_fp16_flag(trt)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.stream = torch.cuda.Stream(device)
        properties = torch.cuda.get_device_properties(device)
        self.gpu_name, self.capability = properties.name, (properties.major, properties.minor)
        self.engines: dict[tuple[int, ...], ShapeEngine] = {}

    @classmethod
    def open(cls, files: ModelFiles, cache_dir: Path | str | None = None) -> "TensorRTSegmenter":
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendMissing("no CUDA GPU visible to torch")
        cache = EngineCache(cache_directory(cache_dir))
        half = not has_fp16_flag(trt)
        onnx_path, half_inside = onnx_for_engine(files, half, cache.directory / "onnx")
        if half and not half_inside:
            log.warning("TensorRT %s builds float16 only from a float16 export of the weights, and model %s has no "
                        ".safetensors; its engines run in float32", trt.__version__, files.name)
        precision = "fp16" if half_inside or not half else "fp32"  # TensorRT 10's flag makes any ONNX fp16
        return cls(trt, onnx_path, precision, cache, torch.device("cuda", torch.cuda.current_device()), files.spec)

    def engine_key(self, shape: tuple[int, ...]) -> EngineKey:
        return EngineKey(self.gpu_name, self.capability, self.trt.__version__, self.onnx_sha256, shape, self.precision)

    def _deserialize(self, serialized: bytes):
        return self.runtime.deserialize_cuda_engine(serialized)

    def _build(self, shape: tuple[int, ...], timing_cache: bytes) -> tuple[bytes, bytes]:
        onnx = self.onnx_path.read_bytes()
        return build_serialized_engine(self.trt, self.logger, onnx, shape, self.fp16_flag, timing_cache)

    def _prepare(self, shape: tuple[int, ...]) -> ShapeEngine:
        trt = self.trt
        engine = self.cache.load_or_build(self.engine_key(shape), self._deserialize,
                                          lambda timing_cache: self._build(shape, timing_cache))
        context = engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
        outputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"expected one input and one output tensor, found {names}")
        for name in names:
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise EngineError(f"tensor {name} is {engine.get_tensor_dtype(name)}; "
                                  "expected float32 input and output")
        if not context.set_input_shape(inputs[0], shape):
            raise EngineError(f"the engine does not accept input shape {shape}")
        output_shape = tuple(context.get_tensor_shape(outputs[0]))
        output = torch.empty(output_shape, dtype=torch.float32, device=self.device)
        context.set_tensor_address(outputs[0], output.data_ptr())
        self.engines[shape] = ShapeEngine(engine, context, inputs[0], output)
        return self.engines[shape]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """N×3×H×W float32 RGB in [0, 1] on the GPU → N×1×H×W float32 alpha in [0, 1] on the GPU."""
        images = images.to(self.device, torch.float32).contiguous()
        shape = tuple(images.shape)
        bound = self.engines.get(shape)
        if bound is None:
            larger = sorted(batch for batch, *size in self.engines if tuple(size) == shape[1:] and batch > shape[0])
            if larger:  # a file's last, short batch: pad it rather than compile another engine
                padding = images.new_zeros((larger[0] - shape[0], *shape[1:]))
                return self(torch.cat([images, padding]))[: shape[0]]
            bound = self._prepare(shape)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        images.record_stream(self.stream)  # keep the allocator from reusing it while TensorRT reads it
        bound.context.set_tensor_address(bound.input_name, images.data_ptr())
        if not bound.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f"TensorRT failed to run the engine for input shape {shape}")
        current.wait_stream(self.stream)
        # The smoother keeps the previous matte, so callers get their own tensor: one small copy
        # on the GPU, not the buffer that the next call overwrites.
        return bound.output.clone()
