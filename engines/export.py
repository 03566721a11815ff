"""Export a Tiramisu to ONNX (input `image` N×3×H×W RGB in [0, 1], output `alpha` N×1×H×W).

    python -m engines.export runs/compact/best.safetensors                  # → runs/compact/best.onnx, dynamic shape
    python -m engines.export runs/compact/best.safetensors --shape 1x144x256 --half -o m.onnx

An existing output is replaced only with `--overwrite`.

The file is checked with `onnx.checker`, and ONNX Runtime's output is compared with
PyTorch's on a random input before the export is accepted.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.cli import run_cli
from engines.errors import BadArgument, EngineError, UnusableInput
from engines.tiramisu import InferenceSpec, Tiramisu, load_weights, weights_header


class _AlphaGraph(nn.Module):
    """The exported graph: float32 image in, float32 alpha out, in any internal precision."""

    def __init__(self, model: Tiramisu, half: bool) -> None:
        super().__init__()
        self.dtype = torch.float16 if half else torch.float32
        self.model = model.to(self.dtype)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.alpha(image.to(self.dtype)).float()


def export_onnx(
    model: Tiramisu,
    path: Path | str,
    shape: tuple[int, int, int] | None = None,
    half: bool = False,
    spec: InferenceSpec = InferenceSpec(),
) -> Path:
    """Write `model` as ONNX to `path` atomically and return the path.

    `shape` (N, H, W) fixes the input shape; without it batch, height and width are dynamic.
    `half` makes the weights and arithmetic float16 (what TensorRT 11's strongly typed
    networks need for FP16), keeping float32 input and output. `spec` is stored in the
    file's metadata, so that the ONNX file alone says how the model must be run.
    """
    import onnx

    path = Path(path)
    batch, height, width = shape or (1, 144, 256)
    example = torch.rand(batch, 3, height, width)
    graph = _AlphaGraph(Tiramisu(model.config), half)
    graph.model.load_state_dict(model.state_dict())
    graph = graph.to(graph.dtype).eval()
    dynamic = None if shape else {"image": {0: "batch", 2: "height", 3: "width"}, "alpha": {0: "batch", 2: "height", 3: "width"}}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["alpha"], dynamic_axes=dynamic)
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto, full_check=True)
    onnx.helper.set_model_props(proto, {"inference": spec.to_json()})
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    with os.fdopen(handle, "wb") as file:
        file.write(proto.SerializeToString())
    os.replace(temporary, path)
    return path


def onnx_difference(model: Tiramisu, path: Path | str, shape: tuple[int, int, int] = (1, 144, 256)) -> float:
    """Largest absolute difference between ONNX Runtime's alpha and PyTorch's on one random input."""
    import onnxruntime

    batch, height, width = shape
    image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval().alpha(image).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(["alpha"], {"image": image.numpy()})
    return float(np.abs(actual - expected).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a Tiramisu's weights to ONNX.")
    parser.add_argument("weights", type=Path, help=".safetensors file")
    parser.add_argument("-o", "--output", type=Path, help="default: beside the weights, .onnx")
    parser.add_argument("--shape", help="fixed NxHxW input shape; dynamic if omitted")
    parser.add_argument("--half", action="store_true", help="float16 weights and arithmetic inside")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def _shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        batch, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadArgument(f"bad --shape {text!r}: use NxHxW, for example 1x144x256") from None
    if min(batch, height, width) <= 0:
        raise BadArgument(f"bad --shape {text!r}: every side must be positive")
    return batch, height, width


def run(args: argparse.Namespace) -> int:
    if not args.weights.is_file():
        raise FileNotFoundError(f"no weights file {args.weights}")
    shape = _shape(args.shape)
    try:
        model = load_weights(args.weights)
    except (ValueError, RuntimeError) as error:  # not safetensors, or not a Tiramisu's
        raise UnusableInput(f"cannot load {args.weights}: {error}") from None
    output = args.output or args.weights.with_suffix(".onnx")
    if output.exists() and not args.overwrite:
        raise BadArgument(f"{output} exists: add --overwrite to replace it (a shipped model's .onnx must stay the "
                          "export of the .safetensors beside it)")
    export_onnx(model, output, shape, args.half, InferenceSpec.from_json(weights_header(args.weights).get("inference")))
    difference = onnx_difference(model, output, shape or (1, 144, 256))
    tolerance = 1e-2 if args.half else 1e-4
    if difference > tolerance:
        raise EngineError(f"ONNX Runtime differs from PyTorch by {difference:.2e} (more than {tolerance:.0e})")
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB); largest difference from PyTorch {difference:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
