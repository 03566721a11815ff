"""Widen or deepen a trained Tiramisu without changing what it computes.

    model = widen(load_weights("engines/weights/compact.safetensors"), PRESETS["compact16"])

The larger network may have a larger growth rate and more layers in each dense block (the
same number of levels). Every dense layer of the larger network makes the old layer's maps
followed by new ones, and each block's extra layers come after the old ones (the Net2Net
idea, Chen et al. 2016). Where a layer reads its input, the old weights are copied to
the old maps' new positions and the weights reading the new maps start at zero, so the wider
network's output equals the narrow one's; the new maps' own weights keep their random start
and training grows them from there. Training then starts from the narrow network's accuracy
with more capacity, instead of from scratch.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from engines.tiramisu import DenseBlock, Tiramisu, TiramisuConfig

# For each feature map of the narrow network, its channel's index in the wide network's map.
Places = torch.Tensor


def widen(narrow: Tiramisu, config: TiramisuConfig) -> Tiramisu:
    """A network of `config` (`narrow`'s config with a growth rate and block depths at least
    as large) whose output equals `narrow`'s."""
    old = narrow.config
    same_shape = replace(config, growth=old.growth, down_layers=old.down_layers,
                         bottleneck_layers=old.bottleneck_layers) == old
    deeper = len(config.down_layers) == len(old.down_layers) and all(
        new >= was for new, was in zip((*config.down_layers, config.bottleneck_layers, config.growth),
                                       (*old.down_layers, old.bottleneck_layers, old.growth)))
    if not (same_shape and deeper):
        raise ValueError(f"cannot widen {old} to {config}: only a larger growth rate and deeper blocks are supported")
    wide = Tiramisu(config)
    with torch.no_grad():
        _copy_network(narrow, wide)
    return wide.train(narrow.training)


def _copy_network(narrow: Tiramisu, wide: Tiramisu) -> None:
    wide.stem.load_state_dict(narrow.stem.state_dict())  # the stem keeps its width
    places = torch.arange(narrow.config.first_channels)
    width = narrow.config.first_channels
    skips: list[tuple[Places, int]] = []
    for old_block, new_block, old_down, new_down in zip(narrow.down_blocks, wide.down_blocks,
                                                        narrow.transitions_down, wide.transitions_down):
        new_places, new_width = _copy_block(old_block, new_block, places, width)
        places, width = torch.cat([places, width + new_places]), width + new_width
        skips.append((places, width))
        _copy_batch_norm(old_down[0], new_down[0], places)
        _copy_conv(old_down[2], new_down[2], places, places)
    places, width = _copy_block(narrow.bottleneck, wide.bottleneck, places, width)
    for old_up, new_up, old_block, new_block, (skip_places, skip_width) in zip(
            narrow.transitions_up, wide.transitions_up, narrow.up_blocks, wide.up_blocks, reversed(skips)):
        _copy_conv(old_up, new_up, places, places)
        block_input, input_width = torch.cat([places, width + skip_places]), width + skip_width
        places, width = _copy_block(old_block, new_block, block_input, input_width)
    # The classifier reads the last block's input and its new maps.
    _copy_conv(narrow.classifier, wide.classifier, torch.cat([block_input, input_width + places]),
               torch.arange(narrow.config.classes))


def _copy_block(old: DenseBlock, new: DenseBlock, places: Places, width: int) -> tuple[Places, int]:
    """Copy a dense block whose input's channels sit at `places` of a `width`-channel map;
    returns where its new maps sit in the wide block's output, and that output's width. The
    wide block's extra layers keep their random weights."""
    old_growth, new_growth = old.layers[0][2].out_channels, new.layers[0][2].out_channels
    made = torch.empty(0, dtype=torch.long)
    for index, (old_layer, new_layer) in enumerate(zip(old.layers, new.layers)):
        inputs = torch.cat([places, width + made])
        _copy_batch_norm(old_layer[0], new_layer[0], inputs)
        outputs = index * new_growth + torch.arange(old_growth)
        _copy_conv(old_layer[2], new_layer[2], inputs, torch.arange(old_growth))
        made = torch.cat([made, outputs])
    return made, len(new.layers) * new_growth


def _copy_batch_norm(old: nn.BatchNorm2d, new: nn.BatchNorm2d, places: Places) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name)[places] = getattr(old, name)
    new.num_batches_tracked.copy_(old.num_batches_tracked)


def _copy_conv(old: nn.Conv2d | nn.ConvTranspose2d, new: nn.Conv2d | nn.ConvTranspose2d,
               inputs: Places, outputs: Places) -> None:
    """The old outputs, at `outputs`, read only the old inputs (at `inputs`) with the old
    weights; the new outputs keep their random weights."""
    weight = new.weight if isinstance(new, nn.Conv2d) else new.weight.transpose(0, 1)  # out × in × k × k
    old_weight = old.weight if isinstance(old, nn.Conv2d) else old.weight.transpose(0, 1)
    weight[outputs] = 0
    weight[outputs[:, None], inputs[None, :]] = old_weight
    if old.bias is not None:
        new.bias[outputs] = old.bias
