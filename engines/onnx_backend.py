"""ONNX Runtime backend: the CPU path."""
from __future__ import annotations

import numpy as np
import torch

from engines.errors import BackendMissing, EngineError
from engines.models import ModelFiles
from engines.tiramisu import InferenceSpec


class OnnxSegmenter:
    """Runs an exported Tiramisu (input `image`, output `alpha`) on ONNX Runtime's CPU provider."""

    name = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, session, spec: InferenceSpec) -> None:
        self.session = session
        self.spec = spec

    @classmethod
    def open(cls, files: ModelFiles, threads: int = 2) -> "OnnxSegmenter":
        try:
            import onnxruntime
        except ImportError as error:
            raise BackendMissing(f"onnxruntime is not installed ({error}); pip install onnxruntime") from error
        if files.onnx is None:
            raise EngineError(f"model {files.name} has no .onnx export; run python -m engines.export")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would steal the cores from the torch stages between inferences.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(str(files.onnx), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own unrelated exception types
            raise EngineError(f"onnxruntime cannot load {files.onnx}: {error}") from error
        return cls(session, files.spec)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        (alpha,) = self.session.run(["alpha"], {"image": array})
        return torch.from_numpy(alpha)
