"""Where a model's files are: a shipped model's name or a weights path, resolved to its
safetensors and ONNX files, and the inference spec they carry."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engines.errors import EngineError
from engines.tiramisu import InferenceSpec, weights_header

WEIGHTS_DIR = Path(__file__).parent / "weights"
# The default of the live loop and the benchmarks: `compact16-steady` (below)
# deepened at its two lowest resolutions and in the bottleneck (`engines.widen`) and trained
# further with the consistency loss. Against `compact16-steady` it is 2.2 IoU higher on
# `coco_subsets`, 2.8 on `camvid`, 0.7 on `ccp` and 0.2 on the portraits (`davis2016` and
# `pennfudan` within 0.2), as steady, and costs about 5 % of the live loop's frames per
# second on two CPU cores.
DEFAULT_MODEL = "compact16-deep"
# File mode's default: `compact16-deep` trained further at a 320-pixel long side. With the
# look-ahead and mirror averaging of file mode it is ahead of `compact16-deep` on moving and
# mid-sized people (`davis2016` +2.2, `pennfudan` +1.5, `coco_subsets` +1.4) and steadier,
# within 0.6 behind on the portraits, `ccp` and far pedestrians, and takes a fifth to a
# third longer.
FILE_MODEL = "compact16-deep-320"
# `compact16-steady`: `compact16` trained further with the consistency loss (`engines.train
# --consistency`), where `compact16-deep` starts.
# `compact16`: `compact` widened to growth 16 and trained further.
# `compact`: the growth-12 network the others come from (0.54 M parameters).
# `compact-320`: `compact` trained further at a 320-pixel long side (better on moving, mid-sized people).
# `compact-int8` (an ONNX file only): `compact` quantised to int8 for ONNX Runtime on the CPU.


@dataclass(frozen=True)
class ModelFiles:
    """A model's weights: safetensors for PyTorch, and the ONNX export where one exists."""

    name: str
    safetensors: Path | None
    onnx: Path | None

    @property
    def spec(self) -> InferenceSpec:
        """How the model must be run, from the header of its weights or its ONNX metadata."""
        if self.safetensors is not None:
            return InferenceSpec.from_json(weights_header(self.safetensors).get("inference"))
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(str(self.onnx), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own unrelated exception types
            raise EngineError(f"onnxruntime cannot load {self.onnx}: {error}") from error
        return InferenceSpec.from_json(session.get_modelmeta().custom_metadata_map.get("inference"))


def resolve_model(model: str | Path | None) -> ModelFiles:
    """A shipped model's name (`compact`) or a path to a `.safetensors` or `.onnx` file."""
    text = str(model or DEFAULT_MODEL)
    path = Path(text)
    if path.suffix in (".safetensors", ".onnx"):
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} not found")
        sibling = path.with_suffix(".onnx" if path.suffix == ".safetensors" else ".safetensors")
        files = {path.suffix: path, sibling.suffix: sibling if sibling.is_file() else None}
        return ModelFiles(path.stem, files[".safetensors"], files[".onnx"])
    safetensors, onnx = WEIGHTS_DIR / f"{text}.safetensors", WEIGHTS_DIR / f"{text}.onnx"
    if not safetensors.is_file() and not onnx.is_file():
        shipped = sorted({p.stem for p in WEIGHTS_DIR.glob("*.safetensors")} | {p.stem for p in WEIGHTS_DIR.glob("*.onnx")})
        raise FileNotFoundError(f"no model {text!r}: give a .safetensors or .onnx path, or one of {', '.join(shipped)}")
    return ModelFiles(text, safetensors if safetensors.is_file() else None, onnx if onnx.is_file() else None)
