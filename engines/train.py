"""Train a Tiramisu on a portrait folder.

    python -m engines.train --data ../shared/data/portraits --preset compact --epochs 60 --out runs/compact

Two recipes:
- `seed`: the article's baseline (two classes, cross-entropy, RMSProp at lr 1e-3, flips only).
- `ours` (default): AdamW with warm-up and cosine decay, cross-entropy plus soft Dice, and
  the augmentation of `engines.data.augment` (light, blur, noise, dark clothes, scale,
  position, landscape framing, pasted backgrounds).

Both hold out a fixed tenth of the train split for validation, keep the checkpoint with the
best validation IoU as `best.safetensors`, write `last.pt` every epoch (`--resume` continues
from it), and save `grid_NNN.png`: predictions on fixed validation images.
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
from tqdm import tqdm

from engines.data import AugmentSettings, augment, load_portraits, read_split
from engines.metrics import batch_iou
from engines.tiramisu import PRESETS, Tiramisu, save_weights


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


def split_validation(names: list[str], seed: int) -> tuple[list[str], list[str]]:
    """A fixed tenth of the train split for validation."""
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    cut = max(1, len(shuffled) // 10)
    return shuffled[cut:], shuffled[:cut]


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
def validate(model: Tiramisu, images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]) -> float:
    model.eval()
    scores = []
    for start in range(0, len(images), 32):
        image = F.interpolate(images[start : start + 32].float() / 255, size=size, mode="bilinear", align_corners=False)
        truth = F.interpolate(masks[start : start + 32].float() / 255, size=size, mode="bilinear", align_corners=False) > 0.5
        scores.append(batch_iou(model.alpha(image) > 0.5, truth))
    model.train()
    return float(torch.cat(scores).mean())


def train(settings: TrainSettings) -> None:
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(settings), indent=2))

    train_names, val_names = split_validation(read_split(settings.data, "train"), settings.seed)
    load_size = (settings.size[0] * 5 // 4, settings.size[1] * 5 // 4)  # room to zoom in
    print(f"loading {len(train_names)} training and {len(val_names)} validation portraits at {load_size}")
    train_images, train_masks = load_portraits(settings.data, "train", load_size, train_names)
    val_images, val_masks = load_portraits(settings.data, "train", settings.size, val_names)

    model = Tiramisu.from_preset(settings.preset)
    steps_per_epoch = len(train_names) // settings.batch
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

    start_epoch, best = 0, -1.0
    checkpoint_path = out / "last.pt"
    if settings.resume and checkpoint_path.exists():
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
        print(f"resumed after epoch {checkpoint['epoch']} (best validation IoU {best:.2f})")

    generator = torch.Generator().manual_seed(settings.seed + start_epoch)
    augment_settings = AugmentSettings()
    model.train()
    for epoch in range(start_epoch, settings.epochs):
        order = torch.randperm(len(train_names), generator=generator)
        progress = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False)
        losses = []
        started = time.perf_counter()
        for step in progress:
            index = order[step * settings.batch : (step + 1) * settings.batch]
            landscape = settings.recipe != "seed" and torch.rand(1, generator=generator).item() < settings.landscape_share
            size = settings.landscape_size if landscape else settings.size
            if settings.recipe == "seed":
                image, target = _flip_only(train_images[index], train_masks[index], size, generator)
            else:
                image, target = augment(train_images[index], train_masks[index], size, generator, augment_settings)
            logits = model(image)
            loss = F.cross_entropy(logits, target[:, 0].long())
            if settings.recipe != "seed":
                loss = loss + settings.dice_weight * dice_loss(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            progress.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")

        val_iou = validate(model, val_images, val_masks, settings.size)
        improved = val_iou > best
        if improved:
            best = val_iou
            save_weights(model, out / "best.safetensors", preset=settings.preset, recipe=settings.recipe,
                         epoch=str(epoch + 1), val_iou=f"{val_iou:.2f}")
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "epoch": epoch, "best": best}, checkpoint_path)
        with torch.no_grad():
            model.eval()
            sample = F.interpolate(val_images[:8].float() / 255, size=settings.size, mode="bilinear", align_corners=False)
            cv2.imwrite(str(out / f"grid_{epoch + 1:03d}.png"), prediction_grid(val_images[:8], val_masks[:8], model.alpha(sample)))
            model.train()
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_iou": val_iou, "best": best,
                  "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - started}
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        print(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val IoU {val_iou:.2f}{' (best)' if improved else ''}"
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
    args = parser.parse_args(argv)
    train(TrainSettings(**vars(args)))


if __name__ == "__main__":
    main()
