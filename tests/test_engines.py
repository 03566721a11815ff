"""The network family, its weights on disk, every backend against the PyTorch reference,
and the dataset tools."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.data import CocoPersonFilter, augment, coco_person_subset
from engines.segmenter import BackendMissing, open_segmenter, resolve_model
from engines.tiramisu import Tiramisu, load_weights, save_weights


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


def test_shipped_model_resolves_to_both_formats():
    files = resolve_model(None)
    assert files.safetensors is not None and files.safetensors.is_file()
    assert files.onnx is not None and files.onnx.is_file()
    with pytest.raises(FileNotFoundError, match="no model 'nope'"):
        resolve_model("nope")


def _box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_coco_filter_keeps_one_or_two_people_covering_20_to_70_percent(tmp_path):
    images, annotations = [], []
    cases = {  # image id: person boxes (x0, y0, x1, y1) on a 100×100 image, and the verdict
        1: ([(0, 0, 50, 80)], True),  # one person, 40 %
        2: ([(0, 0, 10, 10)], False),  # 1 % — too small
        3: ([(0, 0, 100, 90)], False),  # 90 % — too large
        4: ([(0, 0, 30, 100), (50, 0, 80, 100)], True),  # two people, 60 %
        5: ([(0, 0, 20, 100), (30, 0, 50, 100), (60, 0, 80, 100)], False),  # three people
    }
    annotation_id = 0
    for image_id, (boxes, _) in cases.items():
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 100, "height": 100})
        for x0, y0, x1, y1 in boxes:
            annotation_id += 1
            annotations.append({"id": annotation_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                "segmentation": _box_polygon(x0, y0, x1, y1),
                                "area": (x1 - x0) * (y1 - y0), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))
    kept = coco_person_subset(path, CocoPersonFilter())
    assert sorted(item["id"] for item in kept) == [image_id for image_id, (_, ok) in cases.items() if ok]
    assert kept[0]["mask"].shape == (100, 100)


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
