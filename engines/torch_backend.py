"""PyTorch backend: the reference implementation, on the CPU or a CUDA GPU (half precision)."""
from __future__ import annotations

import torch

from engines.errors import BackendMissing, EngineError
from engines.models import ModelFiles
from engines.tiramisu import InferenceSpec, Tiramisu, load_weights


class TorchSegmenter:
    """Runs a `Tiramisu` eagerly; on CUDA in float16 with float32 input and output."""

    def __init__(self, model: Tiramisu, device: torch.device, threads: int = 2,
                 spec: InferenceSpec = InferenceSpec(), half: bool | None = None) -> None:
        """`half`: float16 inside (default: on CUDA only)."""
        self.device = device
        self.spec = spec
        self.threads = threads
        self.half = device.type == "cuda" if half is None else half
        self.model = model.to(device, torch.float16 if self.half else torch.float32).eval()
        self.name = f"torch-{device.type}"

    @classmethod
    def open(cls, files: ModelFiles, device: str = "cpu", threads: int = 2) -> "TorchSegmenter":
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendMissing("no CUDA GPU visible to torch")
        if files.safetensors is None:
            raise EngineError(f"model {files.name} has no .safetensors weights for PyTorch")
        return cls(load_weights(files.safetensors), torch.device(device), threads, files.spec)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.half:
            return self.model.alpha(images.to(torch.float16)).float()
        # The network gets its own thread count; the loop's per-pixel stages keep theirs.
        stage_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.model.alpha(images)
        finally:
            torch.set_num_threads(stage_threads)
