"""Train a Tiramisu on one or more folders of images with person masks.

    python -m engines.train --data ../shared/data/portraits --preset compact --epochs 60 --out runs/compact
    python -m engines.train --data ../shared/data/portraits:0.4 --data ../shared/data/wholebody/ccp:0.2 \
        --data ../shared/data/wholebody/coco_subsets:0.2 --floor 94 --paste-people 0.3 \
        --init runs/compact/best.safetensors --min-scale 0.4 --ema 0.998 --epochs 20 --out runs/wholebody

Two recipes:
- `seed`: the article's baseline (two classes, cross-entropy, RMSProp at lr 1e-3, flips only).
- `ours` (default): AdamW with warm-up and cosine decay, cross-entropy plus soft Dice, and
  the augmentation of `engines.data.augment` (light, blur, noise, dark clothes, scale,
  position, landscape framing, pasted backgrounds).

Each `--data FOLDER[:SHARE]` (the portrait layout: `images/`, `masks/`, optional `ignore/`,
`train.txt`, optional `val.txt`; `engines.pseudo_label` and `engines.coco_pool` write it) is a
pool; each sample of a batch comes from a pool drawn by its share (default: by pool size).
`ignore/` pixels are left out of the loss and of validation. `--paste-people` pastes the
person of one sample over another, so frames hold several people from different folders.
`--backgrounds` is a folder of photos with nobody in them that people are pasted onto.
`--init` starts from trained weights of the preset, or of a network that differs from it
only by a smaller growth rate or shallower blocks, grown by `engines.widen` (the same output
to start with).
`--consistency` adds `consistency_loss`: each batch also runs shifted by a few pixels and
re-lit, and the two answers are pulled together (for steadier mattes in the live loop).
`--augment-chances` scales the chance of each optional augmentation step (other backgrounds,
blur, noise, uneven light, dark clothes, shadows); 0 keeps only scale, position, flips and
light, for a last pass at a low rate on pictures closer to the ones scored. `--augment-keep`
names steps it leaves as they are (for example `blur,noise`: camera effects stay).

Each pool is validated on its `val.txt`, or on a fixed tenth held out of `train.txt` where it
has none. The rule for the checkpoint kept as `best.safetensors`: the highest mean of the
pools' validation IoUs among the epochs where the first pool (the portraits) scores at least
`--floor`. With `--ema`, what is validated and kept is a moving average of the weights and
batch-norm statistics, steadier than the last step's when batches mix unlike pools.
Training writes `last.pt` every epoch (`--resume` continues from it), a line per epoch with
every pool's validation IoU to `log.jsonl`, and `grid_NNN.png`: predictions on fixed
validation images of each pool.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from engines.cli import parse_size, run_cli
from engines.data import (OPTIONAL_STEPS, AugmentSettings, augment, load_backgrounds, load_portraits, paste_people,
                          read_split)
from engines.errors import BadArgument
from engines.imaging import network_size, read_rgb
from engines.metrics import batch_iou
from engines.tiramisu import PRESETS, InferenceSpec, Tiramisu, load_weights, save_weights
from engines.widen import widen


@dataclass
class TrainSettings:
    data: tuple[str, ...]
    shares: tuple[float, ...] = ()  # chance of each pool per sample; empty: by pool size
    floor: float = 0.0  # the first pool's validation IoU that a kept checkpoint must reach
    out: str = "runs/compact"
    preset: str = "compact"
    recipe: str = "ours"
    size: tuple[int, int] = (256, 192)  # H, W of portrait crops (the flag is WIDTHxHEIGHT)
    landscape_size: tuple[int, int] = (160, 288)  # H, W of landscape crops (the flag is WIDTHxHEIGHT)
    landscape_share: float = 0.25
    epochs: int = 60
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    threads: int = 2
    seed: int = 0
    resume: bool = False
    paste_people: float = 0.0
    backgrounds: str | None = None
    init: str | None = None
    min_scale: float = 0.7
    rotate: float = AugmentSettings.rotate_degrees  # the largest rotation of the augmentation, either way
    ema: float = 0.0  # >0: validate and keep an exponential moving average of the weights and BN statistics
    augment_chances: float = 1.0  # times the chance of each optional augmentation step (`with_chances`)
    augment_keep: tuple[str, ...] = ()  # optional steps left at their own chance by `augment_chances`
    consistency: float = 0.0  # >0: weight of `consistency_loss` (each batch also runs on a shifted, re-lit copy)


def split_validation(names: list[str], seed: int) -> tuple[list[str], list[str]]:
    """A fixed tenth of the train split for validation."""
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    cut = max(1, len(shuffled) // 10)
    return shuffled[cut:], shuffled[:cut]


@dataclass
class Pool:
    """One training folder in memory: what augmentation draws from, and its held-out tenth."""

    name: str
    images: torch.Tensor
    masks: torch.Tensor
    val_images: torch.Tensor
    val_masks: torch.Tensor

    @property
    def landscape(self) -> bool:
        return self.images.shape[-1] > self.images.shape[-2]


def load_pool(root: str, crop: tuple[int, int], seed: int) -> Pool:
    """`root`'s train split, loaded with room to zoom in, and its validation images; the
    folder's first image sets its aspect, and images of another shape are cropped to it."""
    if (Path(root) / "val.txt").is_file():
        train_names, val_names = read_split(root, "train"), read_split(root, "val")
    else:
        train_names, val_names = split_validation(read_split(root, "train"), seed)
    height, width = read_rgb(Path(root) / "images" / f"{train_names[0]}.jpg").shape[:2]
    load_size = network_size(height, width, max(crop) * 5 // 4, multiple=1)
    print(f"loading {root}: {len(train_names)} training and {len(val_names)} validation images at {load_size}")
    images, masks = load_portraits(root, "train", load_size, train_names)
    val_images, val_masks = load_portraits(root, "val", network_size(height, width, max(crop)), val_names)
    return Pool(Path(root).name, images, masks, val_images, val_masks)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross-entropy plus `dice_weight` × soft Dice over the known pixels.

    logits N×2×H×W; target N×2×H×W float: channel 0 the person, channel 1 the unknown pixels."""
    known = 1 - target[:, 1:2]
    cross_entropy = F.cross_entropy(logits, target[:, 0].long(), reduction="none")[:, None]
    loss = (cross_entropy * known).sum() / known.sum().clamp(min=1)
    if dice_weight:
        probability = torch.softmax(logits, dim=1)[:, 1:2] * known
        person = target[:, :1] * known
        intersection = (probability * person).sum((1, 2, 3))
        total = probability.sum((1, 2, 3)) + person.sum((1, 2, 3))
        loss = loss + dice_weight * (1 - (2 * intersection + 1) / (total + 1)).mean()
    return loss


CONSISTENCY_SHIFT = 6  # largest shift of the copy, in pixels: beyond the stem's stride of 4


def consistency_loss(model: Tiramisu, image: torch.Tensor, logits: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """How much the person probability changes when the batch is shifted by a few pixels, re-lit
    (gain ±15 %, offset ±0.05) and given sensor noise, as consecutive frames of a still camera
    are: the mean absolute difference of the two probabilities, the copy's moved back, over the
    pixels both views see. It needs no labels, and it acts where they leave the network
    unsure (soft edges, things that look a little like people), which is where a matte flickers
    from frame to frame."""
    dy, dx = torch.randint(-CONSISTENCY_SHIFT, CONSISTENCY_SHIFT + 1, (2,), generator=generator).tolist()
    batch = image.shape[0]
    gain = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 0.3
    offset = (torch.rand(batch, 1, 1, 1, generator=generator) - 0.5) * 0.1
    noise = torch.randn(image.shape, generator=generator) * 0.02
    copy = (torch.roll(image, (dy, dx), dims=(2, 3)) * gain + offset + noise).clamp(0, 1)
    probability = torch.softmax(logits, dim=1)[:, 1:2]
    moved = torch.roll(probability, (dy, dx), dims=(2, 3))
    copy_probability = torch.softmax(model(copy), dim=1)[:, 1:2]
    height, width = image.shape[-2:]
    rows = slice(max(dy, 0), height + min(dy, 0))  # what the roll did not wrap around
    columns = slice(max(dx, 0), width + min(dx, 0))
    return (moved - copy_probability)[..., rows, columns].abs().mean()


def _flip_only(images: torch.Tensor, masks: torch.Tensor, out_size, generator) -> tuple[torch.Tensor, torch.Tensor]:
    image = F.interpolate(images.float() / 255, size=out_size, mode="bilinear", align_corners=False)
    mask = (F.interpolate(masks.float() / 255, size=out_size, mode="bilinear", align_corners=False) > 0.5).float()
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    image[flip], mask[flip] = image[flip].flip(-1), mask[flip].flip(-1)
    return image, mask


def prediction_grid(images: torch.Tensor, masks: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """Rows of image | truth | prediction overlay, as an H×W×3 uint8 BGR picture for cv2.

    images N×3×H×W and masks N×2×H×W uint8 (person, unknown), alpha N×1×H×W in [0, 1]."""
    rows = []
    for image, mask, a in zip(images, masks, alpha):
        picture = image.permute(1, 2, 0).numpy()
        truth = np.repeat((mask[0].numpy() // 2 + mask[1].numpy() // 4)[..., None], 3, 2)  # unknown in grey
        overlay = picture.astype(np.float32) * (0.35 + 0.65 * a[0].numpy()[..., None])
        rows.append(np.concatenate([picture, truth, overlay.astype(np.uint8)], 1))
    return cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR)


@torch.no_grad()
def validate(model: Tiramisu, images: torch.Tensor, masks: torch.Tensor) -> float:
    model.eval()
    scores = []
    for start in range(0, len(images), 32):
        image = images[start : start + 32].float() / 255
        person, known = masks[start : start + 32, :1] > 127, masks[start : start + 32, 1:] <= 127
        scores.append(batch_iou((model.alpha(image) > 0.5) & known, person & known))
    model.train()
    return float(torch.cat(scores).mean())


def draw_batch(pools: list[Pool], shares: torch.Tensor, landscape_shares: torch.Tensor, settings: TrainSettings,
               augment_settings: AugmentSettings, backgrounds: torch.Tensor | None,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One augmented batch: each sample from a pool drawn by `shares`, all at one crop size
    (landscape by the chance of the pools drawn). Images N×3×H×W float, targets N×2×H×W."""
    drawn = torch.multinomial(shares, settings.batch, replacement=True, generator=generator)
    landscape = (settings.recipe != "seed"
                 and torch.rand(1, generator=generator).item() < landscape_shares[drawn].mean().item())
    size = settings.landscape_size if landscape else settings.size
    parts = []
    for pool_index in drawn.unique().tolist():
        pool = pools[pool_index]
        index = torch.randint(0, len(pool.images), (int((drawn == pool_index).sum()),), generator=generator)
        if settings.recipe == "seed":
            parts.append(_flip_only(pool.images[index], pool.masks[index], size, generator))
        else:
            parts.append(augment(pool.images[index], pool.masks[index], size, generator, augment_settings,
                                 backgrounds))
    image, target = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if settings.paste_people:
        image, target = paste_people(image, target, settings.paste_people, generator)
    return image, target


def open_model(settings: TrainSettings) -> Tiramisu:
    """A new network of the preset, or the `--init` weights (of that preset, or narrower or
    shallower ones grown to it)."""
    if not settings.init:
        return Tiramisu.from_preset(settings.preset)
    model = load_weights(settings.init)
    config = PRESETS[settings.preset]
    if model.config == config:
        return model
    try:
        return widen(model, config)
    except ValueError:
        raise BadArgument(f"--init {settings.init} is neither a {settings.preset!r} network nor a narrower one; "
                          "pass its --preset") from None


def make_optimizer(model: Tiramisu, settings: TrainSettings, steps_per_epoch: int):
    """The recipe's optimizer and learning-rate schedule (stepped once per batch)."""
    if settings.recipe == "seed":
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    warmup, total_steps = steps_per_epoch, steps_per_epoch * settings.epochs

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def save_grid(model: Tiramisu, pools: list[Pool], path: Path) -> None:
    """Predictions on the first four validation images of each pool, as one picture."""
    model.eval()
    grids = []
    for pool in pools:
        sample = pool.val_images[:4]
        picture = prediction_grid(sample, pool.val_masks[:4], model.alpha(sample.float() / 255))
        grids.append(cv2.resize(picture, (480, round(picture.shape[0] * 480 / picture.shape[1]))))
    cv2.imwrite(str(path), np.concatenate(grids, 0))


def load_data(settings: TrainSettings):
    """The pools, each pool's chance per sample and chance of a landscape crop, and the
    background photos (or None)."""
    pools = [load_pool(root, settings.size, settings.seed) for root in settings.data]
    shares = torch.tensor(settings.shares or [float(len(pool.images)) for pool in pools])
    landscape_shares = torch.tensor([1 - settings.landscape_share if pool.landscape else settings.landscape_share
                                     for pool in pools])
    backgrounds = None
    if settings.backgrounds:
        backgrounds = load_backgrounds(settings.backgrounds, (settings.size[0] * 3 // 2, settings.size[0] * 2))
        print(f"{len(backgrounds)} background photos from {settings.backgrounds}")
    return pools, shares, landscape_shares, backgrounds


def train(settings: TrainSettings) -> None:
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=2))

    pools, shares, landscape_shares, backgrounds = load_data(settings)
    model = open_model(settings)
    steps_per_epoch = sum(len(pool.images) for pool in pools) // settings.batch
    optimizer, schedule = make_optimizer(model, settings, steps_per_epoch)
    # What is validated and kept: the weights themselves, or their moving average (which also
    # averages the batch-norm statistics over many batches of every pool).
    average = None
    if settings.ema:
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema), use_buffers=True)
    kept = average.module if average else model
    spec = InferenceSpec(long_side=max(settings.size))  # the network is validated at its crops' long side

    checkpoint_path = out / "last.pt"
    start_epoch, best = 0, -1.0
    if settings.resume and checkpoint_path.exists():
        start_epoch, best = resume(checkpoint_path, model, average, optimizer, schedule)

    generator = torch.Generator().manual_seed(settings.seed + start_epoch)
    augment_settings = AugmentSettings(scale=(settings.min_scale, AugmentSettings.scale[1]), rotate_degrees=settings.rotate)
    augment_settings = augment_settings.with_chances(settings.augment_chances, settings.augment_keep)
    dice_weight = settings.dice_weight if settings.recipe != "seed" else 0.0
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        losses = []
        started = time.perf_counter()
        for _ in (progress := tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False)):
            image, target = draw_batch(pools, shares, landscape_shares, settings, augment_settings, backgrounds,
                                       generator)
            logits = model(image)
            loss = segmentation_loss(logits, target, dice_weight)
            if settings.consistency:
                loss = loss + settings.consistency * consistency_loss(model, image, logits, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if average:
                average.update_parameters(model)
            losses.append(loss.item())
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")

        pool_scores = {pool.name: validate(kept, pool.val_images, pool.val_masks) for pool in pools}
        val_iou = float(np.mean(list(pool_scores.values())))
        improved = val_iou > best and pool_scores[pools[0].name] >= settings.floor
        if improved:
            best = val_iou
            save_weights(kept, out / "best.safetensors", spec, preset=settings.preset, recipe=settings.recipe,
                         epoch=str(epoch + 1), val_iou=f"{val_iou:.2f}")
        partial = checkpoint_path.with_suffix(".pt.partial")  # a kill while saving keeps the last checkpoint
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "average": average.state_dict() if average else None, "epoch": epoch, "best": best}, partial)
        os.replace(partial, checkpoint_path)
        save_grid(kept, pools, out / f"grid_{epoch + 1:03d}.png")
        log_epoch(out, {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_iou": val_iou, "pools": pool_scores,
                        "best": best, "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - started},
                  improved)


def resume(path: Path, model: Tiramisu, average, optimizer, schedule) -> tuple[int, float]:
    """Load `last.pt` into the training state; returns the epoch to start at and the best score."""
    checkpoint = torch.load(path, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    if average:
        average.load_state_dict(checkpoint["average"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"])
    print(f"resumed after epoch {checkpoint['epoch'] + 1} (best validation IoU {checkpoint['best']:.2f})")
    return checkpoint["epoch"] + 1, checkpoint["best"]


def log_epoch(out: Path, record: dict, improved: bool) -> None:
    """One line of `log.jsonl`, and one printed."""
    with open(out / "log.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
    per_pool = ", ".join(f"{name} {score:.2f}" for name, score in record["pools"].items())
    print(f"epoch {record['epoch']}: loss {record['loss']:.4f}  val IoU {record['val_iou']:.2f} ({per_pool})"
          f"{' (best)' if improved else ''}  {record['seconds']:.0f}s", flush=True)


def _folder(text: str) -> tuple[str, float | None]:
    folder, _, share = text.rpartition(":")
    try:
        return (folder, float(share)) if folder else (text, None)
    except ValueError:
        return text, None


def _steps(text: str) -> tuple[str, ...]:
    steps = tuple(step for step in text.split(",") if step)
    unknown = [step for step in steps if step not in OPTIONAL_STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step {unknown[0]!r}; choose from {', '.join(OPTIONAL_STEPS)}")
    return steps


def main(argv: list[str] | None = None) -> int:
    defaults = TrainSettings(data=())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", required=True, type=_folder, metavar="FOLDER[:SHARE]",
                        help="a folder of images/, masks/, train.txt (repeatable; the first is the portraits, "
                             "held to --floor), with its chance per sample (default: by size)")
    parser.add_argument("--floor", type=float, default=defaults.floor,
                        help="the first folder's validation IoU that a kept checkpoint must reach")
    parser.add_argument("--paste-people", type=float, default=defaults.paste_people,
                        help="chance that a sample gets another sample's person pasted over it (default: off)")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS))
    parser.add_argument("--recipe", default=defaults.recipe, choices=["ours", "seed"])
    parser.add_argument("--size", default="x".join(map(str, reversed(defaults.size))),
                        help="WIDTHxHEIGHT of portrait training crops (default: %(default)s)")
    parser.add_argument("--landscape-size", default="x".join(map(str, reversed(defaults.landscape_size))),
                        help="WIDTHxHEIGHT of landscape training crops (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--backgrounds", help="folder of photos with nobody in them, to paste people onto")
    parser.add_argument("--init", help="start from these weights (.safetensors) instead of random ones")
    parser.add_argument("--min-scale", type=float, default=defaults.min_scale,
                        help="smallest zoom of the augmentation; below 1 makes people smaller (default: %(default)s)")
    parser.add_argument("--rotate", type=float, default=defaults.rotate,
                        help="largest rotation of the augmentation in degrees, either way (default: %(default)s)")
    parser.add_argument("--ema", type=float, default=defaults.ema,
                        help="keep a moving average of the weights with this decay per step, e.g. 0.998 (default: off)")
    parser.add_argument("--augment-chances", type=float, default=defaults.augment_chances,
                        help="scale the chance of each optional augmentation step (default: %(default)s)")
    parser.add_argument("--augment-keep", type=_steps, default=defaults.augment_keep, metavar="STEP,...",
                        help="optional steps that --augment-chances leaves as they are, from: "
                             + ", ".join(OPTIONAL_STEPS))
    parser.add_argument("--consistency", type=float, default=defaults.consistency,
                        help="weight of the loss between each batch's answer and a shifted, re-lit, noisy copy's "
                             "(steadier mattes; twice the time a step; default: off)")
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    folders, shares = zip(*args.data)
    if any(share is None for share in shares) and any(share is not None for share in shares):
        raise BadArgument("give a share to every --data folder or to none")
    if any(share is not None and share <= 0 for share in shares):
        raise BadArgument("every --data share must be above 0")
    width, height = parse_size(args.size)
    landscape_width, landscape_height = parse_size(args.landscape_size)
    settings = TrainSettings(**vars(args) | {"data": folders, "shares": tuple(s for s in shares if s is not None),
                                            "size": (height, width), "landscape_size": (landscape_height, landscape_width)})
    train(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
