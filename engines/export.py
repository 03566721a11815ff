"""Export a Tiramisu to ONNX (input `image` N×3×H×W RGB in [0, 1], output `alpha` N×1×H×W).

    python -m engines.export runs/compact/best.safetensors                  # → runs/compact/best.onnx, dynamic shape
    python -m engines.export runs/compact/best.safetensors --shape 1x144x256 --half -o m.onnx
    python -m engines.export engines/weights/compact.safetensors --int8 ../shared/data/portraits  # → compact-int8.onnx

An existing output is replaced only with `--overwrite`.

The file is checked with `onnx.checker`, and ONNX Runtime's output is compared with
PyTorch's on a random input before the export is accepted. `--int8 FOLDER` writes an int8
model for ONNX Runtime's CPU provider instead (`NAME-int8.onnx`): static quantisation with
per-channel weights, the activations' ranges calibrated on the first 64 images of FOLDER's
`train.txt` at the model's network size (each range spans the middle 99.998 % of the values
seen, so that a few extreme values do not coarsen every step). It is accepted when its
matte agrees with PyTorch's at 90 % IoU or more on the next 8 images, not calibrated on
(the shipped `compact-int8`: 99.27 %). TensorRT takes the float file. Nothing takes the
output's name before its check has passed.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from engines.cli import run_cli
from engines.data import read_split
from engines.errors import BadArgument, EngineError, UnusableInput
from engines.imaging import read_rgb
from engines.metrics import batch_iou
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


CALIBRATION_IMAGES, CHECK_IMAGES = 64, 8
INT8_AGREEMENT = 90.0  # the least mean IoU, in percent, of the int8 matte with PyTorch's on held-out images (a broken quantisation scores far lower)


def calibration_images(folder: Path, spec: InferenceSpec, count: int = CALIBRATION_IMAGES,
                       skip: int = 0) -> list[np.ndarray]:
    """`count` images of `folder`'s train list from position `skip`, as 1×3×h×w float32
    network inputs."""
    images = []
    for name in read_split(folder, "train")[skip : skip + count]:
        image = read_rgb(folder / "images" / f"{name}.jpg")
        height, width = spec.input_size(*image.shape[:2])
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        images.append((small.astype(np.float32) / 255).transpose(2, 0, 1)[None].copy())
    return images


def export_int8(model: Tiramisu, path: Path | str, calibration: list[np.ndarray], spec: InferenceSpec) -> Path:
    """Write an int8 model for ONNX Runtime's CPU provider to `path` (the caller checks it
    before giving it its name): QDQ format, weights per channel in 7 bits (`reduce_range`: no
    overflow on CPUs without VNNI), uint8 activations with ranges from `calibration`
    (percentile calibration: the middle 99.998 % of each activation's values)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.images = iter(calibration)

        def get_next(self) -> dict | None:
            image = next(self.images, None)
            return None if image is None else {"image": image}

    path = Path(path)
    with tempfile.TemporaryDirectory() as folder:
        float_path, prepared = Path(folder) / "float.onnx", Path(folder) / "prepared.onnx"
        export_onnx(model, float_path, spec=spec)
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantized = Path(folder) / "int8.onnx"
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)  # the quantiser warns about every integer shape tensor it leaves alone
        try:
            quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=True, calibrate_method=CalibrationMethod.Percentile)
        finally:
            root.setLevel(level)
        proto = onnx.load(str(quantized))
        onnx.helper.set_model_props(proto, {"inference": spec.to_json()})
        onnx.save(proto, str(path))
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


def onnx_agreement(model: Tiramisu, path: Path | str, images: list[np.ndarray]) -> float:
    """Mean IoU, in percent, of ONNX Runtime's matte (alpha > 0.5) with PyTorch's on `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = []
    for image in images:
        with torch.no_grad():
            expected = model.eval().alpha(torch.from_numpy(image)) > 0.5
        actual = torch.from_numpy(session.run(["alpha"], {"image": image})[0]) > 0.5
        scores.append(float(batch_iou(actual, expected)[0]))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a Tiramisu's weights to ONNX.")
    parser.add_argument("weights", type=Path, help=".safetensors file")
    parser.add_argument("-o", "--output", type=Path, help="default: beside the weights, .onnx")
    parser.add_argument("--shape", help="fixed NxHxW input shape; dynamic if omitted")
    parser.add_argument("--half", action="store_true", help="float16 weights and arithmetic inside")
    parser.add_argument("--int8", type=Path, metavar="FOLDER",
                        help="write an int8 model for ONNX Runtime, calibrated on FOLDER's train images")
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
    if args.int8 and (args.shape or args.half):
        raise BadArgument("--int8 takes neither --shape nor --half")
    default = args.weights.with_name(f"{args.weights.stem}-int8.onnx") if args.int8 else args.weights.with_suffix(".onnx")
    output = args.output or default
    if output.exists() and not args.overwrite:
        raise BadArgument(f"{output} exists: add --overwrite to replace it (a shipped model's .onnx must stay the "
                          "export of the .safetensors beside it)")
    spec = InferenceSpec.from_json(weights_header(args.weights).get("inference"))
    if args.int8 and not args.int8.is_dir():
        raise FileNotFoundError(f"no calibration folder {args.int8}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as folder:  # checked before it takes the name
        candidate = Path(folder) / output.name
        if args.int8:
            calibration = calibration_images(args.int8, spec)
            if not calibration:
                raise UnusableInput(f"{args.int8}/train.txt lists no images to calibrate on")
            export_int8(model, candidate, calibration, spec)
            held_out = calibration_images(args.int8, spec, CHECK_IMAGES, skip=CALIBRATION_IMAGES) or calibration[-1:]
            agreement = onnx_agreement(model, candidate, held_out)
            if agreement < INT8_AGREEMENT:
                raise EngineError(f"the int8 matte agrees with PyTorch's at {agreement:.1f} % IoU only "
                                  f"(less than {INT8_AGREEMENT:.0f} %): nothing written")
            check = f"matte IoU with PyTorch's on {len(held_out)} images not calibrated on: {agreement:.2f} %"
        else:
            export_onnx(model, candidate, shape, args.half, spec)
            difference = onnx_difference(model, candidate, shape or (1, 144, 256))
            tolerance = 1e-2 if args.half else 1e-4
            if difference > tolerance:
                raise EngineError(f"ONNX Runtime differs from PyTorch by {difference:.2e} (more than "
                                  f"{tolerance:.0e}): nothing written")
            check = f"largest difference from PyTorch {difference:.2e}"
        os.replace(candidate, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB); {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
