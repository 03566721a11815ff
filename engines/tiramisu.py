"""FC-DenseNet ("The One Hundred Layers Tiramisu", Jégou et al. 2017) for person mattes.

    python -c "from engines.tiramisu import Tiramisu; print(Tiramisu.from_preset('fc103').num_parameters())"

One class covers the paper's networks (`fc56`, `fc67`, `fc103`) and the compact real-time
presets, which put an early strided stem in front of small dense blocks and upsample the
matte at the end. The network maps a batch of RGB images N×3×H×W in [0, 1] to two-class
logits N×2×H×W (background, person); `alpha()` turns them into the person probability.
Any H and W work: pooling rounds up and the up path crops to its skip connection.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from engines.imaging import network_size

# ImageNet statistics: images are normalised inside the network so that every backend takes
# plain [0, 1] RGB.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TiramisuConfig:
    """The numbers that make one member of the FC-DenseNet family."""

    down_layers: tuple[int, ...]
    bottleneck_layers: int
    growth: int
    first_channels: int = 48
    stem_stride: int = 1  # 1, 2 or 4: strided 3×3 convolutions before the first dense block
    dropout: float = 0.2
    classes: int = 2

    @property
    def up_layers(self) -> tuple[int, ...]:
        return tuple(reversed(self.down_layers))


    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TiramisuConfig":
        fields = json.loads(text)
        fields["down_layers"] = tuple(fields["down_layers"])
        return cls(**fields)


@dataclass(frozen=True)
class InferenceSpec:
    """How a model must be run, stored in its weights beside the config: the network input's
    long side and size multiple, and the guided upsampling's radius (network pixels),
    regularisation and contrast. The loop, file mode, evaluation and the GPU check all read it."""

    long_side: int = 256
    multiple: int = 16
    # The guided filter's radius 2 and regularisation 1e-2: against radius 4 and 1e-3, the
    # matte flickers a fifth less on the hike clip and 7 % less on tennis (a soft halo no
    # longer takes on the texture of the ground behind the person, which moves with the
    # camera), and the whole-body validation lists gain 0.05–0.5 IoU except the far
    # pedestrians of camvid (−1.9); the portraits lose 0.1 IoU and 3.6 of boundary F.
    upsample_radius: int = 2
    upsample_eps: float = 1e-2
    upsample_contrast: float = 1.5

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The network's input (H, W) for a frame of height×width."""
        return network_size(height, width, self.long_side, self.multiple)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> "InferenceSpec":
        """The spec in a weights header; the defaults when there is none."""
        return cls(**json.loads(text)) if text else cls()


PRESETS: dict[str, TiramisuConfig] = {
    # The paper's networks (Table 2 of Jégou et al.).
    "fc56": TiramisuConfig(down_layers=(4, 4, 4, 4, 4), bottleneck_layers=4, growth=12),
    "fc67": TiramisuConfig(down_layers=(5, 5, 5, 5, 5), bottleneck_layers=5, growth=16),
    "fc103": TiramisuConfig(down_layers=(4, 5, 7, 10, 12), bottleneck_layers=15, growth=16),
    # Real-time on two CPU cores: a stride-4 stem, then four small dense blocks.
    # Chosen by measuring: growth 12 with 32 stem channels runs in about 5 ms at 144×256 and
    # 7.5 ms at 256×192 on ONNX Runtime with 2 threads (0.54 M parameters).
    "compact": TiramisuConfig(
        down_layers=(3, 3, 3, 3), bottleneck_layers=3, growth=12, first_channels=32,
        stem_stride=4, dropout=0.0,
    ),
    # `compact` at growth 16: 0.89 M parameters for 2–5 % more time on ONNX Runtime with
    # AVX-512, whose blocked layout takes channels in sixteens (growth 12 is not).
    "compact16": TiramisuConfig(
        down_layers=(3, 3, 3, 3), bottleneck_layers=3, growth=16, first_channels=32,
        stem_stride=4, dropout=0.0,
    ),
    # `compact16` with deeper blocks at the two lowest resolutions and in the bottleneck,
    # where a layer costs little arithmetic: 1.46 M parameters for 9–13 % more time than
    # `compact16` on ONNX Runtime (trained weights, alternating calls at 256×192 and 256×144).
    "compact16-deep": TiramisuConfig(
        down_layers=(3, 3, 4, 5), bottleneck_layers=5, growth=16, first_channels=32,
        stem_stride=4, dropout=0.0,
    ),
}


class DenseLayer(nn.Sequential):
    """BN-ReLU-3×3 conv-dropout, producing `growth` new feature maps."""

    def __init__(self, channels: int, growth: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, growth, 3, padding=1, bias=False),
            nn.Dropout2d(dropout),
        )


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and every earlier layer.

    Returns only the new feature maps; callers that need the input too concatenate it.
    """

    def __init__(self, channels: int, layers: int, growth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(channels + i * growth, growth, dropout) for i in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new: list[torch.Tensor] = []
        for layer in self.layers:
            out = layer(torch.cat([x, *new], dim=1))
            new.append(out)
        return torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    """BN-ReLU-1×1 conv-dropout-2×2 max-pool (rounding odd sizes up)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.Dropout2d(dropout),
            nn.MaxPool2d(2, ceil_mode=True),
        )


def _stem(config: TiramisuConfig) -> nn.Sequential:
    """A 3×3 convolution, strided and repeated down to 1/`stem_stride` resolution."""
    if config.stem_stride not in (1, 2, 4):
        raise ValueError(f"stem_stride must be 1, 2 or 4, not {config.stem_stride}")
    channels = config.first_channels
    if config.stem_stride == 1:
        return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False))
    layers: list[nn.Module] = [nn.Conv2d(3, channels // 2, 3, stride=2, padding=1, bias=False)]
    width = channels // 2
    if config.stem_stride == 4:
        layers += [
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 3, stride=2, padding=1, bias=False),
        ]
        width = channels
    if width != channels:
        layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.Conv2d(width, channels, 1, bias=False)]
    return nn.Sequential(*layers)


class Tiramisu(nn.Module):
    """FC-DenseNet. Input N×3×H×W RGB in [0, 1]; output N×classes×H×W logits."""

    def __init__(self, config: TiramisuConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = _stem(config)

        growth, dropout = config.growth, config.dropout
        channels = config.first_channels
        skip_channels: list[int] = []
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        for layers in config.down_layers:
            self.down_blocks.append(DenseBlock(channels, layers, growth, dropout))
            channels += layers * growth
            skip_channels.append(channels)
            self.transitions_down.append(TransitionDown(channels, dropout))

        self.bottleneck = DenseBlock(channels, config.bottleneck_layers, growth, dropout)
        new_channels = config.bottleneck_layers * growth

        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for layers, skip in zip(config.up_layers, reversed(skip_channels)):
            self.transitions_up.append(
                nn.ConvTranspose2d(new_channels, new_channels, 3, stride=2, padding=1, output_padding=1)
            )
            channels = new_channels + skip
            self.up_blocks.append(DenseBlock(channels, layers, growth, dropout))
            new_channels = layers * growth
        # The last block keeps its input as well as its new maps for the classifier.
        self.classifier = nn.Conv2d(channels + new_channels, config.classes, 1)

    @classmethod
    def from_preset(cls, name: str) -> "Tiramisu":
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls(PRESETS[name])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _coarse_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits at the classifier's resolution (1/`stem_stride` of the input)."""
        x = self.stem((image - self.mean) / self.std)
        skips: list[torch.Tensor] = []
        for block, down in zip(self.down_blocks, self.transitions_down):
            x = torch.cat([x, block(x)], dim=1)
            skips.append(x)
            x = down(x)
        new = self.bottleneck(x)
        for up, block, skip in zip(self.transitions_up, self.up_blocks, reversed(skips)):
            upsampled = up(new)[:, :, : skip.shape[2], : skip.shape[3]]
            x = torch.cat([upsampled, skip], dim=1)
            new = block(x)
        return self.classifier(torch.cat([x, new], dim=1))

    def _to_input_size(self, maps: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if self.config.stem_stride == 1:
            return maps
        return F.interpolate(maps, size=image.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self._to_input_size(self._coarse_logits(image), image)

    def alpha(self, image: torch.Tensor) -> torch.Tensor:
        """Person probability N×1×H×W in [0, 1]: the softmax of two classes, computed as the
        sigmoid of the logits' difference. The difference is taken before the upsampling
        (the two commute), so one map is upsampled instead of two and no softmax runs at the
        input's resolution: 15 % of the compact network's time on ONNX Runtime."""
        if self.config.classes != 2:
            raise ValueError(f"alpha needs a two-class network, not {self.config.classes} classes")
        logits = self._coarse_logits(image)
        return torch.sigmoid(self._to_input_size(logits[:, 1:2] - logits[:, 0:1], image))


def save_weights(model: Tiramisu, path: Path | str, spec: InferenceSpec = InferenceSpec(), **metadata: str) -> None:
    """Write the weights as safetensors, with the config, the inference spec (and any notes)
    in the header."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": model.config.to_json(), "inference": spec.to_json(), **metadata})


def weights_header(path: Path | str) -> dict[str, str]:
    """The notes in a safetensors file's header (config, inference spec, training notes)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def load_weights(path: Path | str) -> Tiramisu:
    """Read a Tiramisu written by `save_weights` (no pickle), in eval mode on the CPU."""
    from safetensors.torch import load_file

    metadata = weights_header(path)
    if "config" not in metadata:
        raise ValueError(f"{path} has no Tiramisu config in its header")
    model = Tiramisu(TiramisuConfig.from_json(metadata["config"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
