"""TensorRT backend (NVIDIA GPUs): engines built from the ONNX export and cached on disk."""
from __future__ import annotations

import torch

from engines.segmenter import BackendMissing, ModelFiles


def import_tensorrt():
    """The `tensorrt` module, or BackendMissing naming what to install."""
    try:
        import tensorrt
    except ImportError as error:
        raise BackendMissing(f"tensorrt is not installed ({error}); pip install 'tiramisu-stream[tensorrt]'") from None
    return tensorrt


class TensorRTSegmenter:
    name = "tensorrt"

    @classmethod
    def open(cls, files: ModelFiles) -> "TensorRTSegmenter":
        import_tensorrt()
        if not torch.cuda.is_available():
            raise BackendMissing("no CUDA GPU visible to torch")
        raise NotImplementedError
