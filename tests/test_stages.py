"""The per-frame stages: preprocessing, edge-aware upsampling, smoothing, backgrounds and
compositing."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from engines.metrics import iou
from engines.imaging import cover, network_size
from stream.backgrounds import BlurBackground
from stream.frames import blend, guided_upsample, preprocess
from stream.smoothing import TemporalSmoother, smooth_window


def test_network_size_keeps_orientation_and_aspect():
    assert network_size(720, 1280, 256) == (144, 256)
    assert network_size(480, 640, 256) == (192, 256)
    assert network_size(800, 600, 256) == (256, 192)


def test_preprocess_gives_unit_range_rgb_at_network_size():
    frame = torch.zeros(480, 640, 3, dtype=torch.uint8)
    frame[..., 0] = 255
    small = preprocess(frame, (192, 256))
    assert small.shape == (1, 3, 192, 256) and small.dtype == torch.float32
    assert torch.allclose(small[0, 0], torch.ones(192, 256)) and small[0, 1:].abs().max() == 0


def test_guided_upsampling_follows_the_frames_edges():
    """A coarse matte of a sharp disc: the guided upsample recovers the disc's edge better
    than bilinear upsampling."""
    height, width = 360, 640
    ys, xs = np.mgrid[0:height, 0:width]
    truth = (xs - 320) ** 2 + (ys - 180) ** 2 < 120**2
    frame = np.where(truth[..., None], np.uint8(220), np.uint8(40)).repeat(3, 2).astype(np.uint8)
    frame_tensor = torch.from_numpy(frame)
    small = preprocess(frame_tensor, (72, 128))
    coarse = F.interpolate(torch.from_numpy(truth[None, None].astype(np.float32)), size=(18, 32), mode="area")
    small_alpha = F.interpolate(coarse, size=(72, 128), mode="bilinear", align_corners=False)
    guided = guided_upsample(small_alpha, small, frame_tensor)[..., 0].numpy() > 0.5
    bilinear = F.interpolate(small_alpha, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    assert iou(guided, truth) > iou(bilinear, truth) + 1


def test_blend_takes_person_where_alpha_is_one_and_background_elsewhere():
    frame = torch.full((4, 4, 3), 200, dtype=torch.uint8)
    background = torch.full((4, 4, 3), 10, dtype=torch.uint8)
    alpha = torch.zeros(4, 4, 1)
    alpha[:2] = 1
    alpha[2, 0] = 0.5
    out = blend(frame, alpha, background)
    assert out.dtype == torch.uint8
    assert (out[:2] == 200).all() and (out[3] == 10).all() and (out[2, 0] == 105).all()


def test_blur_background_has_no_halo_of_the_persons_colours():
    height, width = 144, 256
    frame = torch.zeros(height, width, 3, dtype=torch.uint8)
    frame[..., 2] = 255  # blue room
    frame[:, 96:160] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # red person
    small = preprocess(frame, (height, width))
    small_alpha = torch.zeros(1, 1, height, width)
    small_alpha[..., 96:160] = 1
    background = BlurBackground().render(frame, small, small_alpha).float()
    beside = background[:, 80:96]  # just outside the person
    assert beside[..., 0].max() < 30, "red bled into the blurred background"
    assert beside[..., 2].min() > 220


def test_smoother_steadies_a_still_scene_and_does_not_lag_motion():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 36, 64, generator=generator)
    smoother = TemporalSmoother(strength=0.7)
    outputs = []
    for _ in range(20):
        flicker = 0.5 + 0.1 * torch.randn(1, 1, 36, 64, generator=generator)
        outputs.append(smoother(flicker, image))
    assert torch.stack(outputs[5:]).std(0).mean() < 0.6 * 0.1
    # The image changes everywhere: the new matte passes straight through.
    moved = 1 - image
    new_alpha = torch.ones(1, 1, 36, 64)
    assert torch.allclose(smoother(new_alpha, moved), new_alpha)


def test_smoother_reset_and_size_change_forget_the_past():
    image = torch.rand(1, 3, 8, 8)
    smoother = TemporalSmoother(0.9)
    smoother(torch.zeros(1, 1, 8, 8), image)
    smoother.reset()
    assert torch.equal(smoother(torch.full((1, 1, 8, 8), 0.6), image), torch.full((1, 1, 8, 8), 0.6))
    other = torch.rand(1, 3, 16, 8)
    assert torch.equal(smoother(torch.full((1, 1, 16, 8), 0.3), other), torch.full((1, 1, 16, 8), 0.3))


def test_look_ahead_smoothing_is_symmetric_and_motion_gated():
    images = torch.rand(3, 3, 8, 8).expand(3, 3, 8, 8).clone()
    images[:] = images[0]
    alphas = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1, 1).expand(3, 1, 8, 8)
    middle = smooth_window(alphas, images, 0.7)
    assert middle.shape == (1, 1, 8, 8)
    assert torch.allclose(middle, torch.full_like(middle, 0.5), atol=1e-6)
    images[2] = 1 - images[1]  # the next frame moved: only the previous one may blend in
    middle = smooth_window(alphas, images, 0.7)
    assert (middle < 0.5).all()


def test_cover_fills_the_frame_without_distortion():
    picture = np.zeros((100, 400, 3), np.uint8)
    picture[:, 150:250] = 255  # a centred square stays a square
    out = cover(picture, 320, 240)
    assert out.shape == (240, 320, 3)
    columns = np.where(out[120, :, 0] > 127)[0]
    assert abs((columns[-1] - columns[0] + 1) - 240) <= 4
