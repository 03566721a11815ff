"""The network family, its weights on disk, every backend against the PyTorch reference,
and the dataset tools."""
from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from engines.coco_pool import CocoPersonFilter, coco_people
from engines.coco_pool import main as coco_main
from engines.data import augment, load_portraits, read_split
from engines.errors import BackendMissing
from engines.models import FILE_MODEL, resolve_model
from engines.segmenter import MirrorAveraged, open_segmenter
from engines.tiramisu import PRESETS, Tiramisu, TiramisuConfig, load_weights, save_weights
from engines.widen import widen
from tests.conftest import trained_looking


@pytest.mark.parametrize("preset, millions", [("fc56", 1.4), ("fc67", 3.5), ("fc103", 9.3)])
def test_paper_presets_have_the_papers_parameter_counts(preset, millions):
    assert Tiramisu.from_preset(preset).num_parameters() / 1e6 == pytest.approx(millions, abs=0.05)


@pytest.mark.parametrize("height, width", [(144, 256), (256, 192), (99, 131)])
def test_compact_takes_any_size_in_either_orientation(height, width):
    model = Tiramisu.from_preset("compact").eval()
    with torch.no_grad():
        alpha = model.alpha(torch.rand(2, 3, height, width))
    assert alpha.shape == (2, 1, height, width)
    assert 0 <= alpha.min() and alpha.max() <= 1


def test_alpha_is_the_two_class_softmax_of_the_logits():
    model = Tiramisu.from_preset("compact").eval()
    image = torch.rand(2, 3, 72, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = torch.softmax(model(image), dim=1)[:, 1:2]
        assert torch.allclose(model.alpha(image), expected, atol=1e-5)


@pytest.mark.parametrize("height, width", [(144, 256), (99, 131)])
def test_widening_keeps_the_output_and_adds_trainable_maps(height, width):
    narrow = trained_looking(Tiramisu.from_preset("compact"))
    wide = widen(narrow, PRESETS["compact16"])
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(wide.alpha(image), narrow.alpha(image), atol=1e-5)
        assert (wide.alpha(image) - Tiramisu(PRESETS["compact16"]).eval().alpha(image)).abs().max() > 0.01
    assert wide.num_parameters() > 1.5 * narrow.num_parameters()
    # The old maps' weights that read the new maps (the first layer's maps 12–15, after the
    # stem's 32) start at zero but are trained: their gradient is not zero.
    second_layer = wide.down_blocks[0].layers[1][2].weight
    assert second_layer[:12, 32 + 12 : 32 + 16].abs().sum() == 0
    wide(image).sum().backward()
    assert second_layer.grad[:12, 32 + 12 : 32 + 16].abs().sum() > 0


def test_widening_keeps_the_output_of_other_shapes_of_network():
    # No stem stride, blocks of unequal depth, an odd growth step and an odd input size.
    narrow_config = TiramisuConfig(down_layers=(2, 3, 1), bottleneck_layers=2, growth=5, first_channels=16)
    narrow = trained_looking(Tiramisu(narrow_config))
    wide = widen(narrow, replace(narrow_config, growth=9)).eval()
    image = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.allclose(wide.alpha(image), narrow.alpha(image), atol=1e-5)


def test_deepening_keeps_the_output_and_trains_the_extra_layers():
    narrow = trained_looking(Tiramisu.from_preset("compact16"))
    deep = widen(narrow, PRESETS["compact16-deep"])
    image = torch.rand(2, 3, 99, 131, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.allclose(deep.alpha(image), narrow.alpha(image), atol=1e-5)
    assert len(deep.bottleneck.layers) == 5 and len(deep.down_blocks[3].layers) == 5
    # The bottleneck's extra layers feed the first up transition through weights that start
    # at zero, and are trained from there.
    up = deep.transitions_up[0].weight  # in × out × k × k
    assert up[3 * 16:, :3 * 16].abs().sum() == 0
    deep(image).sum().backward()
    assert up.grad[3 * 16:, :3 * 16].abs().sum() > 0


def test_widening_refuses_anything_but_a_larger_growth_rate():
    with pytest.raises(ValueError, match="only a larger growth rate"):
        widen(Tiramisu.from_preset("compact16"), PRESETS["compact"])
    with pytest.raises(ValueError, match="only a larger growth rate"):
        widen(Tiramisu.from_preset("compact"), PRESETS["fc56"])
    with pytest.raises(ValueError, match="deeper blocks"):
        widen(Tiramisu.from_preset("compact16-deep"), PRESETS["compact16"])


def test_weights_round_trip_without_pickle(tmp_path):
    model = Tiramisu.from_preset("compact").eval()
    path = tmp_path / "m.safetensors"
    save_weights(model, path, note="test")
    loaded = load_weights(path)
    assert loaded.config == model.config
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded.alpha(image), model.alpha(image))
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    assert json.loads(data[8 : 8 + header])["__metadata__"]["note"] == "test"  # safetensors, not a pickle


def test_every_installed_backend_matches_the_pytorch_reference():
    reference = open_segmenter("torch-cpu")
    images = torch.rand(2, 3, 144, 256, generator=torch.Generator().manual_seed(1))
    expected = reference(images)
    checked = 0
    for backend in ("onnxruntime", "torch-cuda", "tensorrt"):
        try:
            segmenter = open_segmenter(backend)
        except BackendMissing:
            continue
        alpha = segmenter(images.to(segmenter.device)).cpu()
        assert alpha.shape == expected.shape and alpha.dtype == torch.float32
        tolerance = 1e-4 if backend == "onnxruntime" else 2e-2  # GPU backends compute in float16
        assert (alpha - expected).abs().max() < tolerance, backend
        checked += 1
    assert checked >= 1


class RightLeaning:
    """A stand-in network that sees the red channel, weighted more towards the right edge."""

    name, device, spec = "right-leaning", torch.device("cpu"), None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1] * torch.linspace(0, 1, images.shape[-1])


def test_mirror_averaging_flips_the_mirror_images_matte_back():
    images = torch.rand(2, 3, 6, 10, generator=torch.Generator().manual_seed(2))
    ramp = torch.linspace(0, 1, 10)
    expected = images[:, :1] * (ramp + ramp.flip(0)) / 2  # each pixel seen once from each side
    assert torch.allclose(MirrorAveraged(RightLeaning())(images), expected, atol=1e-6)


@pytest.mark.parametrize("name, growth", [(None, 16), (FILE_MODEL, 16), ("compact", 12)])
def test_shipped_default_models_resolve_to_both_formats(name, growth):
    files = resolve_model(name)
    assert files.safetensors is not None and files.safetensors.is_file()
    assert files.onnx is not None and files.onnx.is_file()
    assert load_weights(files.safetensors).config.growth == growth
    with pytest.raises(FileNotFoundError, match="no model 'nope'"):
        resolve_model("nope")


# Person boxes (x0, y0, x1, y1) on 100×100 images, by image id, and whether the seed
# article's filter keeps them.
COCO_CASES = {
    1: ([(0, 0, 50, 80)], True),  # one person, 40 %
    2: ([(0, 0, 10, 10)], False),  # 1 % — too small
    3: ([(0, 0, 100, 90)], False),  # 90 % — too large
    4: ([(0, 0, 30, 100), (50, 0, 80, 100)], True),  # two people, 60 %
    5: ([(0, 0, 20, 100), (30, 0, 50, 100), (60, 0, 80, 100)], False),  # three people
}


def make_coco(root):
    """A COCO annotation file and its images (grey, the people painted red)."""
    images, annotations = [], []
    (root / "images").mkdir(parents=True)
    for image_id, (boxes, _) in COCO_CASES.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 100, "height": 100})
        picture = np.full((100, 100, 3), 128, np.uint8)
        for x0, y0, x1, y1 in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                                "area": (x1 - x0) * (y1 - y0), "bbox": [x0, y0, x1 - x0, y1 - y0]})
            picture[y0:y1, x0:x1] = (0, 0, 255)
        cv2.imwrite(str(root / "images" / f"{image_id}.jpg"), picture)
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))
    return path


def test_coco_filter_keeps_one_or_two_people_covering_20_to_70_percent(tmp_path):
    kept = list(coco_people(make_coco(tmp_path), CocoPersonFilter()))
    assert [item.image_id for item in kept] == [image_id for image_id, (_, ok) in COCO_CASES.items() if ok]
    assert kept[0].mask.shape == (100, 100)
    assert kept[0].coverage == pytest.approx(0.40, abs=0.02)


def test_coco_pool_is_a_folder_train_reads(tmp_path):
    annotations = make_coco(tmp_path / "coco")
    coco_main(["--annotations", str(annotations), "--images", str(tmp_path / "coco" / "images"),
               "--out", str(tmp_path / "pool"), "--min-coverage", "0.005", "--max-people", "3"])
    names = read_split(tmp_path / "pool", "train")
    assert names == [f"coco-{image_id:012d}" for image_id, (boxes, _) in COCO_CASES.items()
                     if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes) <= 7000]
    images, masks = load_portraits(tmp_path / "pool", "train", (100, 100))
    red = (images[:, 0].int() > 200) & (images[:, 2].int() < 60)  # the painted people
    person = masks[:, 0] > 127
    # The masks match the painted people, up to a pixel of rasterisation at each box's edge.
    assert ((red & person).sum((1, 2)) / (red | person).sum((1, 2))).min() > 0.8


def test_coco_pool_shrinks_large_images_and_keeps_masks_binary(tmp_path):
    annotations = make_coco(tmp_path / "coco")
    coco_main(["--annotations", str(annotations), "--images", str(tmp_path / "coco" / "images"),
               "--out", str(tmp_path / "pool"), "--long-side", "37"])
    for name in read_split(tmp_path / "pool", "train"):
        image = cv2.imread(str(tmp_path / "pool" / "images" / f"{name}.jpg"))
        mask = cv2.imread(str(tmp_path / "pool" / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        assert image.shape[:2] == mask.shape == (37, 37)
        assert set(np.unique(mask)) == {0, 255}


@pytest.mark.parametrize("flags", [["--min-people", "3", "--max-people", "2"], ["--max-coverage", "1.5"],
                                   ["--long-side", "0"]])
def test_coco_pool_refuses_bad_settings(tmp_path, capsys, flags):
    annotations = make_coco(tmp_path / "coco")
    assert coco_main(["--annotations", str(annotations), "--images", str(tmp_path / "coco" / "images"),
                      "--out", str(tmp_path / "pool"), *flags]) == 2
    assert "must be" in capsys.readouterr().err.splitlines()[-1]


def test_coco_pool_stops_at_a_missing_image_with_what_it_wrote_listed(tmp_path, capsys):
    annotations = make_coco(tmp_path / "coco")
    (tmp_path / "coco" / "images" / "4.jpg").unlink()
    assert coco_main(["--annotations", str(annotations), "--images", str(tmp_path / "coco" / "images"),
                      "--out", str(tmp_path / "pool"), "--min-coverage", "0.005"]) == 1
    assert "no image" in capsys.readouterr().err.splitlines()[-1]
    assert read_split(tmp_path / "pool", "train") == ["coco-000000000001", "coco-000000000002"]


@pytest.mark.parametrize("content, message", [
    (None, "no such annotation file"),
    ('{"images": [', "is not a COCO annotation file"),
    ('{"images": []}', "is not a COCO annotation file"),
    ('[1, 2]', "is not a COCO annotation file"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}', "has no 'person' category"),
])
def test_coco_pool_refuses_bad_annotations_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "instances.json"
    if content is not None:
        path.write_text(content)
    assert coco_main(["--annotations", str(path), "--images", str(tmp_path), "--out", str(tmp_path / "pool")]) == 1
    assert message in capsys.readouterr().err.splitlines()[-1]
    assert not (tmp_path / "pool").exists()


def test_augment_makes_landscape_crops_with_binary_masks():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (4, 3, 80, 60), dtype=torch.uint8)
    masks = torch.zeros(4, 1, 80, 60, dtype=torch.uint8)
    masks[:, :, 20:, 15:45] = 255
    image, mask = augment(images, masks, (72, 128), generator)
    assert image.shape == (4, 3, 72, 128) and mask.shape == (4, 1, 72, 128)
    assert 0 <= image.min() and image.max() <= 1
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    coverage = mask.mean().item()
    assert 0.05 < coverage < 0.6  # the person is still there, with background beside it
