"""Training end to end on a tiny portrait folder the test paints: checkpoints, the
prediction grid, the best-validation weights, and resuming; the loss's unknown pixels and
copy-paste of people."""
from __future__ import annotations

import json

import cv2
import numpy as np
import torch

import engines.train
from engines.data import AugmentSettings, _cast_shadow, _Draw, augment, load_portraits, paste_people
from engines.tiramisu import Tiramisu, load_weights, save_weights
from engines.train import TrainSettings, consistency_loss, main, open_model, segmentation_loss
from tests.conftest import trained_looking


def paint_portraits(root, count: int = 20) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    names = []
    for index in range(count):
        image = rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)
        mask = np.zeros((80, 60), np.uint8)
        cv2.ellipse(mask, (30, 80), (20 + index % 5, 45), 0, 180, 360, 255, -1)
        cv2.circle(mask, (30, 28), 12, 255, -1)
        image[mask > 0] = (200, 150, 120)
        name = f"{index:03d}"
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
        names.append(name)
    (root / "train.txt").write_text("\n".join(names) + "\n")


def test_train_writes_checkpoints_and_resumes(tmp_path, capsys):
    data, out = tmp_path / "portraits", tmp_path / "run"
    paint_portraits(data)
    common = ["--data", str(data), "--out", str(out), "--size", "48x64", "--batch", "6", "--threads", "1"]
    main([*common, "--epochs", "2"])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]
    assert (out / "grid_002.png").exists() and (out / "last.pt").exists()
    model = load_weights(out / "best.safetensors")
    assert model.config.stem_stride == 4
    capsys.readouterr()
    main([*common, "--epochs", "3", "--resume"])
    assert f"resumed after epoch 2 (best validation IoU {log[1]['best']:.2f})" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]


def test_a_checkpoint_below_the_portrait_floor_is_never_kept(tmp_path):
    data, out = tmp_path / "portraits", tmp_path / "run"
    paint_portraits(data)
    assert main(["--data", str(data), "--out", str(out), "--size", "48x64", "--batch", "6", "--threads", "1",
                 "--epochs", "1", "--floor", "100.01"]) == 0
    (entry,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert entry["best"] == -1 and not (out / "best.safetensors").exists() and (out / "last.pt").exists()


def test_images_of_another_shape_are_cropped_not_squashed(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, (height, width) in {"wide": (100, 200), "tall": (200, 100)}.items():
        image = np.zeros((height, width, 3), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        cv2.circle(mask, (width // 2, height // 2), 30, 255, -1)
        cv2.imwrite(str(tmp_path / "images" / f"{name}.jpg"), image)
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask)
    _, masks = load_portraits(tmp_path, "train", (50, 50), ["wide", "tall"])
    for mask in masks[:, 0] > 127:
        rows, columns = mask.any(1).sum().item(), mask.any(0).sum().item()
        assert rows == columns and 28 <= rows <= 32  # still a circle, at the scale of the short side


def test_unknown_pixels_are_left_out_of_the_loss():
    target = torch.zeros(1, 2, 8, 8)
    logits = torch.zeros(1, 2, 8, 8)
    logits[:, 0] = 10.0  # sure of background everywhere...
    logits[:, :, :, 4:] = torch.tensor([-10.0, 10.0]).view(1, 2, 1, 1)  # ...but for person on the right half
    wrong = segmentation_loss(logits, target, dice_weight=0.5)
    target[:, 1, :, 4:] = 1  # the right half is unknown
    assert segmentation_loss(logits, target, dice_weight=0.5) < 0.05 < wrong


class _PixelModel(torch.nn.Module):
    """Person logit = `weight` × (green − 0.5): an answer that follows each pixel's colour."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(weight))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        person = self.weight * (image[:, 1:2] - 0.5)
        return torch.cat([-person, person], 1)


def test_consistency_loss_measures_how_much_the_answer_moves_with_the_copy():
    """Zero for a network that ignores the picture; for one that follows it pixel by pixel, it
    grows with how strongly it follows the light and noise, and its gradient says to follow less."""
    image = torch.rand(4, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    still = _PixelModel(0.0)
    assert consistency_loss(still, image, still(image), torch.Generator().manual_seed(1)) == 0
    losses = []
    for weight in (2.0, 8.0):
        model = _PixelModel(weight)
        loss = consistency_loss(model, image, model(image), torch.Generator().manual_seed(1))
        loss.backward()
        assert model.weight.grad > 0
        losses.append(loss.item())
    assert 0 < losses[0] < losses[1]


def test_train_with_consistency_adds_its_loss_at_every_step(tmp_path, monkeypatch):
    calls = []

    def counted(*args):
        calls.append(args)
        return consistency_loss(*args)

    monkeypatch.setattr(engines.train, "consistency_loss", counted)
    data, out = tmp_path / "portraits", tmp_path / "run"
    paint_portraits(data)
    common = ["--data", str(data), "--size", "48x64", "--batch", "6", "--threads", "1", "--epochs", "1"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert not calls
    assert main([*common, "--out", str(out), "--consistency", "1"]) == 0
    assert len(calls) == 3  # 18 training images, batches of 6
    assert json.loads((out / "settings.json").read_text())["consistency"] == 1


def test_paste_people_adds_the_other_samples_person_and_keeps_both_labelled():
    images = torch.zeros(2, 3, 10, 10)
    masks = torch.zeros(2, 2, 10, 10)
    images[0, :, :, :3], masks[0, 0, :, :3] = 1.0, 1  # person 0 on the left
    images[1, :, :, 7:], masks[1, 0, :, 7:] = 0.5, 1  # person 1 on the right
    masks[0, 1, :, 7:] = 1  # sample 0 did not know its right edge: now the pasted person covers it
    pasted, labels = paste_people(images, masks, 1.0, torch.Generator().manual_seed(0))
    assert (labels[:, 0, :, :3] == 1).all() and (labels[:, 0, :, 7:] == 1).all() and (labels[:, 0, :, 3:7] == 0).all()
    assert (pasted[0, :, :, 7:] == 0.5).all() and (pasted[1, :, :, :3] == 1.0).all()
    assert not labels[:, 1].any()


def test_cast_shadows_fall_beside_or_below_the_person_and_never_on_it():
    """A standing block of a person in mid-frame: every drawn shadow darkens only pixels
    outside the person, wall shadows beside it, ground shadows below its feet."""
    person = torch.zeros(64, 1, 64, 48)
    person[:, :, 10:40, 20:28] = 1
    draw = _Draw(64, torch.Generator().manual_seed(0), "cpu")
    shaded = _cast_shadow(torch.ones(64, 3, 64, 48), person, AugmentSettings(shadow=1.0), draw)
    darkened = (shaded[:, 0] < 0.99).float()
    assert (darkened * person[:, 0]).sum() == 0
    assert 0.3 <= (1 - shaded).amax() <= 0.65
    below_feet = darkened[:, 42:].sum((1, 2)) > 0
    beside = darkened[:, 10:40, :16].sum((1, 2)) + darkened[:, 10:40, 32:].sum((1, 2)) > 0
    assert below_feet.any() and beside.any() and (below_feet | beside).all()


def test_a_ground_shadow_is_the_person_flipped_about_the_feet_and_flattened():
    """Every draw at the middle of its range: a ground shadow (chance 0.5 counts as drawn),
    flattened to 0.55, not slanted. The 30-row person's shadow starts at the feet and is
    about 16 rows long, under the person's columns."""
    class Middle(_Draw):
        def uniform(self, low, high, shape=None):
            return torch.full((self.n,) if shape is None else shape, (low + high) / 2)

        def chance(self, p):
            return torch.full((self.n, 1, 1, 1), float(p >= 0.5))

    person = torch.zeros(1, 1, 80, 48)
    person[:, :, 10:40, 20:28] = 1
    shaded = _cast_shadow(torch.ones(1, 3, 80, 48), person, AugmentSettings(shadow=1.0), Middle(1, None, "cpu"))
    rows, columns = torch.nonzero(shaded[0, 0] < 0.8, as_tuple=True)
    assert 39 <= rows.min() <= 41 and 53 <= rows.max() <= 58
    assert columns.min() >= 18 and columns.max() <= 29


def test_augmentation_with_no_optional_steps_keeps_the_photo_plain():
    """A red person on a flat green photo that fills the frame: with the optional steps' chances
    at 0 every background stays flat and green (only light and colour change); at full chances
    other backgrounds, blur, noise and uneven light come in."""
    images = torch.zeros(32, 3, 64, 48, dtype=torch.uint8)
    images[:, 1] = 200
    masks = torch.zeros(32, 2, 64, 48, dtype=torch.uint8)
    masks[:, 0, 20:64, 16:32] = 255
    images[:, 0] = masks[:, 0]
    images[:, 1] -= (masks[:, 0] > 0).to(torch.uint8) * 200
    still = AugmentSettings(scale=(1.0, 1.0), shift=0.0, rotate_degrees=0.0)

    def backgrounds(settings: AugmentSettings) -> list[torch.Tensor]:
        out, labels = augment(images, masks, (64, 48), torch.Generator().manual_seed(0), settings)
        return [image[:, label[0] == 0] for image, label in zip(out, labels)]

    plain = backgrounds(still.with_chances(0.0))
    assert all(((b[1] > b[0]) & (b[1] > b[2])).all() and b.std(1).max() < 1e-3 for b in plain)
    busy = backgrounds(still.with_chances(1.0))
    assert sum(b.std(1).max() > 0.01 for b in busy) >= 16


def test_with_chances_leaves_the_kept_steps_as_they_are():
    settings = AugmentSettings().with_chances(0.0, keep=("blur", "noise"))
    assert (settings.blur, settings.noise) == (AugmentSettings.blur, AugmentSettings.noise)
    assert settings.paste == settings.shadow == settings.uneven_light == settings.dark_clothes == 0.0


def test_rotation_of_the_augmentation_stays_within_its_bound():
    """A thin upright bar, rotated by the augmentation: its tilt is spread up to the bound
    and never beyond it."""
    images = torch.zeros(64, 3, 96, 96, dtype=torch.uint8)
    masks = torch.zeros(64, 2, 96, 96, dtype=torch.uint8)
    masks[:, 0, 8:88, 46:50] = 255

    def tilts(degrees: float) -> np.ndarray:
        settings = AugmentSettings(scale=(1.0, 1.0), shift=0.0, rotate_degrees=degrees).with_chances(0.0)
        _, labels = augment(images, masks, (96, 96), torch.Generator().manual_seed(0), settings)
        angles = []
        for label in labels[:, 0].numpy():
            rows, columns = np.nonzero(label > 0.5)
            slope = np.polyfit(rows, columns, 1)[0]  # columns per row: the bar's lean from upright
            angles.append(np.degrees(np.arctan(abs(slope))))
        return np.array(angles)

    assert tilts(0.0).max() < 1.0
    wide = tilts(30.0)
    assert wide.max() <= 31.0 and wide.max() > 24.0 and np.median(wide) > 10.0


def test_init_weights_of_the_preset_are_loaded_as_they_are(tmp_path):
    trained = trained_looking(Tiramisu.from_preset("compact"))
    path = tmp_path / "trained.safetensors"
    save_weights(trained, path)
    opened = open_model(TrainSettings(data=(), init=str(path), preset="compact")).state_dict()
    assert opened.keys() == trained.state_dict().keys()
    assert all(torch.equal(opened[name], value) for name, value in trained.state_dict().items())


def test_narrower_init_weights_are_widened_to_the_preset(tmp_path, capsys):
    narrow = trained_looking(Tiramisu.from_preset("compact"))
    path = tmp_path / "narrow.safetensors"
    save_weights(narrow, path)
    wide = open_model(TrainSettings(data=(), init=str(path), preset="compact16")).eval()
    assert wide.config.growth == 16
    image = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(wide.alpha(image), narrow.alpha(image), atol=1e-5)
    data = tmp_path / "portraits"
    paint_portraits(data)
    assert main(["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1", "--init", str(path),
                 "--preset", "fc56"]) == 2
    assert "neither a 'fc56' network nor a narrower one" in capsys.readouterr().err
