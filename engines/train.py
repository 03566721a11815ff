"""Train a Tiramisu on a portrait folder, optionally with teacher-labelled extra folders.

    python -m engines.train --data ../shared/data/portraits --preset compact --epochs 60 --out runs/compact
    python -m engines.train --data ../shared/data/portraits --extra runs/fullbody --backgrounds photos/ \
        --init runs/compact/best.safetensors --min-scale 0.4 --ema 0.998 --epochs 20 --out runs/fullbody-tune

Two recipes:
- `seed`: the article's baseline (two classes, cross-entropy, RMSProp at lr 1e-3, flips only).
- `ours` (default): AdamW with warm-up and cosine decay, cross-entropy plus soft Dice, and
  the augmentation of `engines.data.augment` (light, blur, noise, dark clothes, scale,
  position, landscape framing, pasted backgrounds).

`--extra` folders (the same layout, e.g. written by `engines.pseudo_label`) are further pools:
a share of the batches (`--extra-share`) comes from them, from each in proportion to its
size. `--backgrounds` is a folder of photos with nobody in them that people are pasted onto.
`--init` starts from trained weights of the same preset.

Every pool holds out a fixed tenth for validation; the validation score is the mean of the
pools' IoUs. With `--ema`, what is validated and kept is a moving average of the weights and
batch-norm statistics, steadier than the last step's when batches come from unlike pools.
Training keeps the checkpoint with the best score as `best.safetensors`, writes `last.pt`
every epoch (`--resume` continues from it), and saves `grid_NNN.png`: predictions on fixed
validation images of each pool.
"""
from __future__ import annotations

import argparse
import json
import math
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

from engines.data import AugmentSettings, augment, load_backgrounds, load_portraits, read_rgb, read_split
from engines.metrics import batch_iou
from engines.tiramisu import PRESETS, Tiramisu, load_weights, save_weights
from stream.frames import network_size


@dataclass
class TrainSettings:
    data: str
    out: str = "runs/compact"
    preset: str = "compact"
    recipe: str = "ours"
    size: tuple[int, int] = (256, 192)  # H, W of portrait crops
    landscape_size: tuple[int, int] = (160, 288)  # H, W of landscape crops
    landscape_share: float = 0.25
    epochs: int = 60
    batch: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    threads: int = 2
    seed: int = 0
    resume: bool = False
    extra: tuple[str, ...] = ()
    extra_share: float = 0.5
    backgrounds: str | None = None
    init: str | None = None
    min_scale: float = 0.7
    ema: float = 0.0  # >0: validate and keep an exponential moving average of the weights and BN statistics


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
    """`root`'s train split, loaded with room to zoom in; the folder's first image sets its
    aspect, and images of another shape are cropped to it."""
    train_names, val_names = split_validation(read_split(root, "train"), seed)
    height, width = read_rgb(Path(root) / "images" / f"{train_names[0]}.jpg").shape[:2]
    load_size = network_size(height, width, long_side=max(crop) * 5 // 4, multiple=1)
    print(f"loading {root}: {len(train_names)} training and {len(val_names)} validation images at {load_size}")
    images, masks = load_portraits(root, "train", load_size, train_names)
    val_images, val_masks = load_portraits(root, "train", network_size(height, width, long_side=max(crop)), val_names)
    return Pool(Path(root).name, images, masks, val_images, val_masks)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probability = torch.softmax(logits, dim=1)[:, 1:2]
    intersection = (probability * target).sum((1, 2, 3))
    total = probability.sum((1, 2, 3)) + target.sum((1, 2, 3))
    return (1 - (2 * intersection + 1) / (total + 1)).mean()


def _flip_only(images: torch.Tensor, masks: torch.Tensor, out_size, generator) -> tuple[torch.Tensor, torch.Tensor]:
    image = F.interpolate(images.float() / 255, size=out_size, mode="bilinear", align_corners=False)
    mask = (F.interpolate(masks.float() / 255, size=out_size, mode="bilinear", align_corners=False) > 0.5).float()
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    image[flip], mask[flip] = image[flip].flip(-1), mask[flip].flip(-1)
    return image, mask


def prediction_grid(images: torch.Tensor, masks: torch.Tensor, alpha: torch.Tensor) -> np.ndarray:
    """Rows of image | truth | prediction overlay, as an H×W×3 uint8 BGR picture for cv2.

    images N×3×H×W and masks N×1×H×W uint8, alpha N×1×H×W in [0, 1]."""
    rows = []
    for image, mask, a in zip(images, masks, alpha):
        picture = image.permute(1, 2, 0).numpy()
        truth = np.repeat(mask[0].numpy()[..., None], 3, 2)  # uint8 masks hold 0 or 255
        overlay = picture.astype(np.float32) * (0.35 + 0.65 * a[0].numpy()[..., None])
        rows.append(np.concatenate([picture, truth, overlay.astype(np.uint8)], 1))
    return cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR)


@torch.no_grad()
def validate(model: Tiramisu, images: torch.Tensor, masks: torch.Tensor) -> float:
    model.eval()
    scores = []
    for start in range(0, len(images), 32):
        image = images[start : start + 32].float() / 255
        scores.append(batch_iou(model.alpha(image) > 0.5, masks[start : start + 32] > 127))
    model.train()
    return float(torch.cat(scores).mean())


def train(settings: TrainSettings) -> None:
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=2))

    pools = [load_pool(root, settings.size, settings.seed) for root in (settings.data, *settings.extra)]
    shares = torch.ones(1)  # chance of each pool per batch
    if settings.extra:
        sizes = torch.tensor([float(len(pool.images)) for pool in pools[1:]])
        shares = torch.cat([torch.tensor([1 - settings.extra_share]), settings.extra_share * sizes / sizes.sum()])
    backgrounds = None
    if settings.backgrounds:
        backgrounds = load_backgrounds(settings.backgrounds, (settings.size[0] * 3 // 2, settings.size[0] * 2))
        print(f"{len(backgrounds)} background photos from {settings.backgrounds}")

    if settings.init:
        model = load_weights(settings.init)
        if model.config != PRESETS[settings.preset]:
            raise ValueError(f"--init {settings.init} is not a {settings.preset!r} network; pass its --preset")
    else:
        model = Tiramisu.from_preset(settings.preset)
    steps_per_epoch = sum(len(pool.images) for pool in pools) // settings.batch
    total_steps = steps_per_epoch * settings.epochs
    if settings.recipe == "seed":
        optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        warmup = steps_per_epoch

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    # What is validated and kept: the weights themselves, or their moving average (which also
    # averages the batch-norm statistics over many batches of every pool).
    average = None
    if settings.ema:
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema), use_buffers=True)
    kept = average.module if average else model

    start_epoch, best = 0, -1.0
    checkpoint_path = out / "last.pt"
    if settings.resume and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        if average:
            average.load_state_dict(checkpoint["average"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
        print(f"resumed after epoch {checkpoint['epoch']} (best validation IoU {best:.2f})")

    generator = torch.Generator().manual_seed(settings.seed + start_epoch)
    augment_settings = AugmentSettings(scale=(settings.min_scale, AugmentSettings.scale[1]))
    model.train()
    for epoch in range(start_epoch, settings.epochs):
        progress = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False)
        losses = []
        started = time.perf_counter()
        for step in progress:
            pool = pools[int(torch.multinomial(shares, 1, generator=generator))]
            index = torch.randint(0, len(pool.images), (settings.batch,), generator=generator)
            landscape_share = 1 - settings.landscape_share if pool.landscape else settings.landscape_share
            landscape = settings.recipe != "seed" and torch.rand(1, generator=generator).item() < landscape_share
            size = settings.landscape_size if landscape else settings.size
            if settings.recipe == "seed":
                image, target = _flip_only(pool.images[index], pool.masks[index], size, generator)
            else:
                image, target = augment(pool.images[index], pool.masks[index], size, generator, augment_settings,
                                        backgrounds)
            logits = model(image)
            loss = F.cross_entropy(logits, target[:, 0].long())
            if settings.recipe != "seed":
                loss = loss + settings.dice_weight * dice_loss(logits, target)
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
        improved = val_iou > best
        if improved:
            best = val_iou
            save_weights(kept, out / "best.safetensors", preset=settings.preset, recipe=settings.recipe,
                         epoch=str(epoch + 1), val_iou=f"{val_iou:.2f}")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "average": average.state_dict() if average else None, "epoch": epoch, "best": best}, checkpoint_path)
        with torch.no_grad():
            kept.eval()
            grids = []
            for pool in pools:
                sample = pool.val_images[:4]
                picture = prediction_grid(sample, pool.val_masks[:4], kept.alpha(sample.float() / 255))
                grids.append(cv2.resize(picture, (480, round(picture.shape[0] * 480 / picture.shape[1]))))
            cv2.imwrite(str(out / f"grid_{epoch + 1:03d}.png"), np.concatenate(grids, 0))
        model.train()
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_iou": val_iou, "pools": pool_scores,
                  "best": best, "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - started}
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        per_pool = ", ".join(f"{name} {score:.2f}" for name, score in pool_scores.items())
        print(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val IoU {val_iou:.2f} ({per_pool}){' (best)' if improved else ''}"
              f"  {record['seconds']:.0f}s", flush=True)


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> None:
    defaults = TrainSettings(data="")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="portrait folder (images/, masks/, train.txt)")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS))
    parser.add_argument("--recipe", default=defaults.recipe, choices=["ours", "seed"])
    parser.add_argument("--size", type=_size, default=defaults.size, help="HxW of training crops")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--extra", action="append", default=[], help="another folder of the same layout (repeatable)")
    parser.add_argument("--extra-share", type=float, default=defaults.extra_share,
                        help="share of batches drawn from the --extra folders (default: %(default)s)")
    parser.add_argument("--backgrounds", help="folder of photos with nobody in them, to paste people onto")
    parser.add_argument("--init", help="start from these weights (.safetensors) instead of random ones")
    parser.add_argument("--min-scale", type=float, default=defaults.min_scale,
                        help="smallest zoom of the augmentation; below 1 makes people smaller (default: %(default)s)")
    parser.add_argument("--ema", type=float, default=defaults.ema,
                        help="keep a moving average of the weights with this decay per step, e.g. 0.998 (default: off)")
    args = parser.parse_args(argv)
    args.extra = tuple(args.extra)
    train(TrainSettings(**vars(args)))


if __name__ == "__main__":
    main()
