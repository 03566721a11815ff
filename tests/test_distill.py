"""Teacher labels for full-body footage, bystanders left out of the loss, and training that
mixes folders.
The teachers here are stand-ins: one finds the clip's skin-toned figure by its colour, and a
tiny ONNX graph with Robust Video Matting's inputs and outputs counts the frames it has seen."""
from __future__ import annotations

import json

import cv2
import numpy as np
import torch

from engines.bystanders import main as bystanders_main
from engines.bystanders import write_folder as bystanders_folder
from engines.data import background_crops, load_backgrounds, load_portraits
from engines.pseudo_label import MattingTeacher, confident, label, open_teacher
from engines.pseudo_label import main as label_main
from engines.train import main as train_main
from tests.conftest import export_matting, make_clip
from tests.test_train import paint_portraits


class SkinTeacher:
    recurrent = False

    def __init__(self):
        self.seen: list[int] = []  # widths of the images it was given

    def reset(self) -> None:
        self.seen.append(0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.seen.append(image.shape[1])
        return (np.abs(image.astype(int) - (200, 150, 120)).sum(-1) < 60).astype(np.float32)


class CountingMatte(torch.nn.Module):
    """Robust Video Matting's interface: alpha is the red pixels, times (frames seen so far) / 10,
    carried in the first recurrent state."""

    def forward(self, src, r1i, r2i, r3i, r4i, downsample_ratio):
        count = r1i.mean() + 1
        pha = (src[:, :1] > 0.5).float() * torch.clamp(count / 10, max=1.0) * downsample_ratio.clamp(max=1)
        return src, pha, r1i + 1, r2i, r3i, r4i


def test_confidence_rule():
    sure = np.zeros((100, 100), np.float32)
    sure[20:80, 40:60] = 1.0
    assert confident(sure, max_unsure=1.0)
    unsure = sure.copy()
    unsure[10:90, 20:80] = np.where(unsure[10:90, 20:80] > 0, 1.0, 0.5)  # a wide half-sure halo
    assert not confident(unsure, max_unsure=1.0)
    assert not confident(np.zeros((100, 100), np.float32), max_unsure=1.0)  # nobody there


def test_label_writes_a_training_folder_and_adds_to_it(tmp_path):
    clip = make_clip(tmp_path / "walk.mp4", frames=12, size=(320, 240))
    out = tmp_path / "fullbody"
    names = label([clip], out, SkinTeacher(), every=4, long_side=160)
    assert names == ["walk_00000", "walk_00004", "walk_00008"]
    image = cv2.imread(str(out / "images" / "walk_00004.jpg"))
    mask = cv2.imread(str(out / "masks" / "walk_00004.png"), cv2.IMREAD_GRAYSCALE)
    assert image.shape == (120, 160, 3) and mask.shape == (120, 160)
    # The figure fills the lower two thirds of a quarter-wide column; the red patch is not it.
    assert mask[100, 60] == 255 and mask[5, 5] == 0 and mask[100, 5] == 0

    empty = np.full((90, 120, 3), 120, np.uint8)
    cv2.imwrite(str(tmp_path / "empty_room.png"), empty)
    portrait = empty.copy()
    portrait[30:, 40:80] = (120, 150, 200)  # BGR on disk, RGB (200, 150, 120) when read
    cv2.imwrite(str(tmp_path / "standing.png"), portrait)
    added = label([tmp_path / "empty_room.png", tmp_path / "standing.png"], out, SkinTeacher())
    assert added == ["standing"]  # nobody in the empty room: left out rather than taught as background
    assert (out / "train.txt").read_text().split() == [*names, "standing"]


def test_a_recurrent_teacher_sees_every_frame_and_starts_afresh_for_each_input(tmp_path):
    for camera in ("east", "west"):  # two clips of the same file name
        (tmp_path / camera).mkdir()
        make_clip(tmp_path / camera / "walk.mp4", frames=9, size=(320, 240))
    teacher = SkinTeacher()
    teacher.recurrent = True
    out = tmp_path / "out"
    names = label([tmp_path / "east", tmp_path / "west"], out, teacher, every=4, long_side=160)
    assert names == [f"{camera}-walk_{index:05d}" for camera in ("east", "west") for index in (0, 4, 8)]
    assert len(list((out / "images").iterdir())) == 6
    assert teacher.seen == ([0] + [160] * 9) * 2  # reset, then all nine frames, scaled down


def test_matting_teacher_carries_its_state_and_settles_on_stills(tmp_path):
    model = export_matting(CountingMatte(), tmp_path / "rvm.onnx")
    teacher = open_teacher(model, threads=1)
    assert isinstance(teacher, MattingTeacher) and teacher.recurrent
    image = np.zeros((60, 80, 3), np.uint8)
    image[20:50, 30:50, 0] = 255
    first, second = teacher(image), teacher(image)
    assert first.shape == (60, 80) and first[0, 0] == 0
    assert np.isclose(first[30, 40], 0.3) and np.isclose(second[30, 40], 0.4)  # three passes, then one
    teacher.reset()
    assert np.isclose(teacher(image)[30, 40], 0.3)


def test_background_photos_fill_the_crops(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, colour in enumerate([(0, 0, 255), (0, 255, 0)]):
        cv2.imwrite(str(folder / f"{index}.jpg"), np.full((300, 500, 3), colour, np.uint8))
    bank = load_backgrounds(folder, (48, 64))
    assert bank.shape == (2, 3, 48, 64)
    crops = background_crops(bank, 8, (32, 40), torch.Generator().manual_seed(0))
    assert crops.shape == (8, 3, 32, 40)
    means = crops.mean(dim=(2, 3))
    # Each crop is one photo, red or green, never blank or mixed.
    assert torch.all((means[:, 0] > 0.95) ^ (means[:, 1] > 0.95))


def test_training_mixes_pools_and_starts_from_weights(tmp_path):
    portraits, extra, photos = tmp_path / "portraits", tmp_path / "fullbody", tmp_path / "photos"
    paint_portraits(portraits)
    clip = make_clip(tmp_path / "walk.mp4", frames=40, size=(128, 96))
    label([clip], extra, SkinTeacher(), every=2)
    photos.mkdir()
    cv2.imwrite(str(photos / "wall.jpg"), np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    common = ["--data", str(portraits), "--size", "48x64", "--batch", "6", "--threads", "1"]
    train_main([*common, "--out", str(tmp_path / "first"), "--epochs", "1"])
    tuned = ["--data", f"{portraits}:0.6", "--data", f"{extra}:0.4", *common[2:], "--out", str(tmp_path / "tuned"),
             "--backgrounds", str(photos), "--paste-people", "0.5",
             "--init", str(tmp_path / "first" / "best.safetensors"), "--min-scale", "0.4", "--ema", "0.9"]
    train_main([*tuned, "--epochs", "2"])
    train_main([*tuned, "--epochs", "3", "--resume"])
    log = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    checkpoint = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)
    weight = "stem.0.weight"
    assert weight in checkpoint["model"]
    assert not torch.equal(checkpoint["average"][f"module.{weight}"], checkpoint["model"][weight])
    assert set(log[-1]["pools"]) == {"portraits", "fullbody"}
    assert abs(log[-1]["val_iou"] - np.mean(list(log[-1]["pools"].values()))) < 1e-9
    settings = json.loads((tmp_path / "tuned" / "settings.json").read_text())
    assert settings["data"] == [str(portraits), str(extra)] and settings["shares"] == [0.6, 0.4]
    assert settings["min_scale"] == 0.4 and settings["ema"] == 0.9 and settings["paste_people"] == 0.5


def test_a_missing_teacher_or_input_is_one_line_and_exit_1(tmp_path, capsys):
    model = export_matting(CountingMatte(), tmp_path / "rvm.onnx")
    for argv, message in ([[str(tmp_path), "--teacher", str(tmp_path / "none.whl")], "no teacher model at"],
                          [[str(tmp_path / "gone"), "--teacher", str(model)], "no such file or folder"]):
        assert label_main([*argv, "--out", str(tmp_path / "out")]) == 1
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error


def test_bystanders_that_the_teacher_sees_are_left_out_of_training_images_only(tmp_path):
    """Two skin-toned people per image, only the left one masked: the right one becomes ignore/
    in the training images; validation images keep their own (empty) ignore maps."""
    data = tmp_path / "street"
    for folder in ("images", "masks"):
        (data / folder).mkdir(parents=True)
    for name in ("a", "b", "c"):
        image = np.full((80, 120, 3), 40, np.uint8)
        mask = np.zeros((80, 120), np.uint8)
        cv2.rectangle(image, (10, 10), (30, 79), (200, 150, 120), -1)  # the main person, masked
        cv2.rectangle(mask, (10, 10), (30, 79), 255, -1)
        cv2.rectangle(image, (80, 30), (95, 79), (200, 150, 120), -1)  # a bystander, unmasked
        cv2.imwrite(str(data / "images" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(data / "masks" / f"{name}.png"), mask)
    (data / "train.txt").write_text("a\nb\n")
    (data / "val.txt").write_text("c\n")
    out = tmp_path / "street-clean"
    left_out = bystanders_folder(data, out, SkinTeacher(), margin=4)
    assert set(left_out) == {"a", "b"}
    images, masks = load_portraits(out, "train", (80, 120))
    ignore = masks[:, 1] > 127
    assert ignore[:, 40:75, 83:92].all() and not ignore[:, :, :40].any()  # the bystander, not the main person
    assert (masks[:, 0] > 127)[:, 40:75, 15:25].all()  # the main person stays a person
    _, val_masks = load_portraits(out, "val", (80, 120))
    assert not val_masks[:, 1].any()
    assert bystanders_main(["--teacher", str(tmp_path / "none.whl"), "--data", str(data), "--out", str(out)]) == 1
