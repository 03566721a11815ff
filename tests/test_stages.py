"""The per-frame stages: preprocessing, edge-aware upsampling, smoothing, backgrounds and
compositing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from engines.metrics import iou
from engines.tiramisu import InferenceSpec
from engines.imaging import cover, network_size
from stream.backgrounds import BlurBackground
from stream.backgrounds import ColourBackground, ImageBackground
from stream.frames import _gaussian_blur_torch, blend, box_mean, gaussian_blur, guided_upsample, half_size, preprocess, resize_image
from stream.chain import LookAheadChain, MatteChain
from stream.smoothing import Hysteresis, TemporalSmoother, look_ahead, luma


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
    spec = InferenceSpec()
    guided = guided_upsample(small_alpha, small, frame_tensor, spec.upsample_radius, spec.upsample_eps)[..., 0].numpy() > 0.5
    bilinear = F.interpolate(small_alpha, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    assert iou(guided, truth) > iou(bilinear, truth) + 1


@pytest.mark.parametrize("batch, height, width, radius", [(2, 144, 256, 4), (2, 37, 53, 2), (2, 5, 9, 4), (200, 9, 16, 2)])
def test_box_mean_averages_only_the_pixels_inside_the_image(batch, height, width, radius):
    """The CPU's OpenCV box filter against torch's pooling, which the CUDA path runs (600
    planes in the last case)."""
    image = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    size = 2 * radius + 1
    rows = F.avg_pool2d(image, (1, size), stride=1, padding=(0, radius), count_include_pad=False)
    expected = F.avg_pool2d(rows, (size, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    assert torch.allclose(box_mean(image, radius), expected, atol=1e-5)


@pytest.mark.parametrize("height, width", [(96, 128), (37, 53), (1, 6)])
def test_half_size_on_the_cpu_is_torch_pooling(height, width):
    """OpenCV's area resize (the edge repeated at an odd size) against the CUDA path's pooling."""
    image = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    expected = F.avg_pool2d(image, 2, ceil_mode=True)
    actual = half_size(image)
    assert actual.shape == expected.shape and torch.allclose(actual, expected, atol=1e-6)


@pytest.mark.parametrize("height, width, sigma", [(96, 128, 2.0), (20, 31, 1.5)])
def test_gaussian_blur_on_the_cpu_is_the_cuda_paths_convolution(height, width, sigma):
    image = torch.rand(1, 7, height, width, generator=torch.Generator().manual_seed(2))
    expected = _gaussian_blur_torch(image, sigma, int(3 * sigma))
    actual = gaussian_blur(image, sigma)
    assert actual.shape == image.shape and torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, image, atol=1e-2)


def test_guided_upsampling_on_the_cpu_is_the_fast_guided_filter():
    """The OpenCV pass equals the filter written plainly in torch (the CUDA path's formula):
    coefficients fitted at low resolution, upsampled bilinearly, applied to the green."""
    generator = torch.Generator().manual_seed(3)
    frame = torch.randint(0, 256, (90, 160, 3), dtype=torch.uint8, generator=generator)
    small = preprocess(frame, (36, 64))
    small_alpha = torch.rand(1, 1, 36, 64, generator=generator)
    radius, eps = 4, 1e-3
    guide = small[:, 1:2]
    mean = lambda x: box_mean(x, radius)  # noqa: E731
    a = (mean(guide * small_alpha) - mean(guide) * mean(small_alpha)) / (mean(guide * guide) - mean(guide) ** 2 + eps)
    b = mean(small_alpha) - a * mean(guide)
    up = lambda x: F.interpolate(x, size=(90, 160), mode="bilinear", align_corners=False)[0, 0]  # noqa: E731
    expected = (up(a) * frame[:, :, 1].float() / 255 + up(b)).clamp(0, 1)
    actual = guided_upsample(small_alpha, small, frame, radius, eps)
    assert actual.shape == (90, 160, 1) and actual.dtype == torch.float32
    assert torch.allclose(actual[..., 0], expected, atol=1e-4)
    steeper = ((up(a) * frame[:, :, 1].float() / 255 + up(b) - 0.5) * 1.5 + 0.5).clamp(0, 1)
    assert torch.allclose(guided_upsample(small_alpha, small, frame, radius, eps, 1.5)[..., 0], steeper, atol=1e-4)


def test_blend_on_the_cpu_rounds_the_convex_blend():
    generator = torch.Generator().manual_seed(4)
    frame = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=generator)
    background = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8, generator=generator)
    alpha = torch.rand(48, 64, 1, generator=generator)
    expected = background.float() + alpha * (frame.float() - background.float())
    assert (blend(frame, alpha, background).float() - expected).abs().max() <= 0.51


def test_backgrounds_render_full_frames_made_once_per_size(tmp_path):
    frame = torch.zeros(30, 40, 3, dtype=torch.uint8)
    small, small_alpha = preprocess(frame, (24, 32)), torch.zeros(1, 1, 24, 32)
    green = ColourBackground("green", (0, 177, 64))
    first = green.render(frame, small, small_alpha)
    assert first.shape == (30, 40, 3) and first.dtype == torch.uint8 and (first[..., 1] == 177).all()
    assert green.render(frame, small, small_alpha) is first
    assert green.render(torch.zeros(10, 20, 3, dtype=torch.uint8), small, small_alpha).shape == (10, 20, 3)
    picture = np.zeros((60, 80, 3), np.uint8)
    picture[:, :, 2] = 200  # red in BGR
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), picture)
    image = ImageBackground(path)
    rendered = image.render(frame, small, small_alpha)
    assert rendered.shape == (30, 40, 3) and rendered.dtype == torch.uint8 and (rendered[..., 0] == 200).all()
    assert image.render(frame, small, small_alpha) is rendered


def test_resize_image_gives_uint8_pictures_at_the_asked_size():
    image = torch.full((1, 3, 9, 16), 100.0)
    resized = resize_image(image, (90, 160))
    assert resized.shape == (90, 160, 3) and resized.dtype == torch.uint8 and (resized == 100).all()


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


def textured(generator: torch.Generator, height: int = 72, width: int = 128) -> torch.Tensor:
    """A 1×3×h×w scene with structure at several scales, for the optical flow to follow."""
    coarse = F.interpolate(torch.rand(1, 3, 6, 10, generator=generator), size=(height, width), mode="bicubic")
    fine = F.interpolate(torch.rand(1, 3, 24, 40, generator=generator), size=(height, width), mode="bilinear")
    return (0.6 * coarse + 0.4 * fine).clamp(0, 1)


def moving_square(scene: torch.Tensor, left: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scene with a bright 24×24 square at column `left`, and the square as a matte."""
    image, alpha = scene.clone(), torch.zeros(1, 1, *scene.shape[-2:])
    image[..., 24:48, left : left + 24] = torch.tensor([1.0, 0.9, 0.8]).view(1, 3, 1, 1)
    alpha[..., 24:48, left : left + 24] = 1
    return image, alpha


def test_smoother_steadies_a_still_scene():
    """A matte hovering about 0.5 with noise 0.1: the blend cuts the noise below 0.4 of it,
    and the hysteresis then makes fewer pixels change side than the blend alone."""
    image = textured(torch.Generator().manual_seed(0))
    mattes = [0.5 + 0.1 * torch.randn(1, 1, 72, 128, generator=torch.Generator().manual_seed(i)) for i in range(20)]
    blend_only, smoother = TemporalSmoother(hysteresis=False), TemporalSmoother()
    blended = torch.stack([blend_only(matte, image) for matte in mattes][5:])
    assert blended.std(0).mean() < 0.4 * 0.1
    shown = torch.stack([smoother(matte, image) for matte in mattes][5:]) > 0.5
    flips = lambda sides: (sides[1:] != sides[:-1]).float().mean()  # noqa: E731
    assert flips(shown) < 0.8 * flips(blended > 0.5)


def test_smoother_follows_a_moving_edge_within_the_frame():
    generator = torch.Generator().manual_seed(1)
    scene, smoother = textured(generator), TemporalSmoother()
    for step in range(12):
        image, truth = moving_square(scene, 10 + 6 * step)
        smoothed = smoother(truth, image)
        assert ((smoothed > 0.5) == (truth > 0.5)).float().mean() > 0.995, step  # no lag, no ghost


def test_smoother_shows_what_appears_at_once_and_forgets_across_a_cut():
    generator = torch.Generator().manual_seed(2)
    scene, smoother = textured(generator), TemporalSmoother()
    for _ in range(5):
        smoother(torch.zeros(1, 1, 72, 128), scene)
    image, hand = moving_square(scene, 50)  # something comes in, and the network sees it
    assert smoother(hand, image)[..., 30:42, 56:68].min() > 0.9
    cut = textured(torch.Generator().manual_seed(3))
    fresh = torch.full((1, 1, 72, 128), 0.8)
    assert torch.allclose(smoother(fresh, cut), fresh, atol=0.05)


def test_hysteresis_keeps_a_region_hovering_about_one_half_from_blinking():
    hysteresis, scene = Hysteresis(0.1), torch.full((1, 1, 4, 4), 0.3)
    hovering = [0.45, 0.55, 0.45, 0.55, 0.7, 0.45, 0.55, 0.42, 0.35, 0.55, 0.45]
    shown = [bool(hysteresis(torch.full((1, 1, 4, 4), value), scene)[0, 0, 0, 0] > 0.5) for value in hovering]
    # hidden until it passes 0.6, then shown until it falls below 0.4
    assert shown == [False, False, False, False, True, True, True, True, False, False, False]
    # confident values barely move; 0 and 1 stay
    confident, scene = torch.tensor([0.0, 0.1, 0.9, 1.0]).view(1, 1, 1, 4), torch.full((1, 1, 1, 4), 0.3)
    hysteresis.reset()
    hysteresis(confident, scene)
    remapped = hysteresis(confident, scene)
    assert remapped[0, 0, 0, [0, 3]].tolist() == [0.0, 1.0]
    assert torch.allclose(remapped, confident, atol=0.02) and not torch.equal(remapped, confident)
    with pytest.raises(ValueError):
        Hysteresis(0.5)


def test_hysteresis_forgets_across_a_cut():
    """What was shown in one shot is not kept in the next: a matte just under 0.5 after a
    cut passes as it is, while in the same shot it stays shown."""
    hysteresis, shot, other_shot = Hysteresis(0.1), torch.full((1, 1, 8, 8), 0.3), torch.full((1, 1, 8, 8), 0.8)
    for _ in range(3):
        hysteresis(torch.full((1, 1, 8, 8), 0.9), shot)
    assert hysteresis(torch.full((1, 1, 8, 8), 0.48), shot).min() > 0.5
    assert torch.equal(hysteresis(torch.full((1, 1, 8, 8), 0.48), other_shot), torch.full((1, 1, 8, 8), 0.48))


def test_smoother_reset_and_size_change_forget_the_past():
    image = torch.rand(1, 3, 8, 8)
    smoother = TemporalSmoother(0.9)
    smoother(torch.zeros(1, 1, 8, 8), image)
    smoother.reset()
    assert torch.equal(smoother(torch.full((1, 1, 8, 8), 0.6), image), torch.full((1, 1, 8, 8), 0.6))
    other = torch.rand(1, 3, 16, 8)
    assert torch.equal(smoother(torch.full((1, 1, 16, 8), 0.3), other), torch.full((1, 1, 16, 8), 0.3))


def test_look_ahead_blends_the_next_matte_along_the_motion():
    generator = torch.Generator().manual_seed(4)
    scene = textured(generator)
    images = scene.expand(3, 3, 72, 128).clone()
    alphas = torch.tensor([0.4, 0.6, 0.5]).view(3, 1, 1, 1).expand(3, 1, 72, 128)
    blended = look_ahead(alphas, luma(images), 0.7)
    assert blended.shape == (2, 1, 72, 128)
    weight = 0.7 * 0.8  # a still scene; the mattes differ by 0.2
    assert torch.allclose(blended[0], torch.full_like(blended[0], 0.4 + 0.2 * weight / (1 + weight)), atol=1e-3)
    # A square moving 6 pixels right, matted 0.8 and then 1: the next frame's matte is moved
    # onto this one's square, also on its left strip, where the two squares do not overlap.
    frames = [moving_square(scene, left) for left in (20, 26)]
    images = torch.cat([f[0] for f in frames])
    blended = look_ahead(torch.cat([0.8 * frames[0][1], frames[1][1]]), luma(images), 0.9)
    weight = 0.9 * 0.8
    expected = 0.8 + 0.2 * weight / (1 + weight)
    assert abs(blended[0, 0, 26:46, 21:26].mean() - expected) < 0.01  # the left strip
    assert abs(blended[0, 0, 26:46, 21:43].mean() - expected) < 0.01
    assert blended[0, 0, :, 50:].max() == 0 and blended[0, 0, :, :18].max() == 0  # no ghost beside it
    images[1] = textured(torch.Generator().manual_seed(5))  # the next frame is another scene: it does not count
    assert torch.equal(look_ahead(alphas[:2], luma(images), 0.7)[0], alphas[0])


class Brightness:
    """A stand-in network: each picture's matte is its own brightness, so every frame's differs."""

    name, device, spec = "brightness", torch.device("cpu"), InferenceSpec()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(1, keepdim=True)


@pytest.mark.parametrize("batch", [1, 2, 8])
@pytest.mark.parametrize("count", [1, 2, 9])
def test_file_mode_chain_gives_each_frame_its_own_matte_in_order(batch, count):
    """`LookAheadChain` against the steps done on the whole clip at once: smoothing in order,
    the look-ahead (the last frame its own next) and the hysteresis."""
    scene = (textured(torch.Generator().manual_seed(6), 96, 160)[0].permute(1, 2, 0) * 200).to(torch.uint8)
    frames = []
    for index in range(count):
        frame = scene.clone()
        frame[30:70, 10 + 8 * index : 50 + 8 * index] = 250  # a square moving right
        frames.append(frame.numpy())
    chain = LookAheadChain(MatteChain(Brightness()), batch, 0.9)
    released = [pair for index, frame in enumerate(frames) for pair in chain.add(index, frame)] + chain.finish()
    assert chain.finish() == []
    assert [tag for tag, _ in released] == list(range(count))

    prepared = [MatteChain(Brightness()).prepare(frame) for frame in frames]
    smoother = TemporalSmoother(0.9, hysteresis=False)
    alphas = torch.cat([smoother(Brightness()(each.small), each.small) for each in prepared])
    smalls = torch.cat([each.small for each in prepared])
    ahead = look_ahead(torch.cat([alphas, alphas[-1:]]), luma(torch.cat([smalls, smalls[-1:]])), 0.9)
    hysteresis = Hysteresis()
    for (_, matte), alpha, each in zip(released, ahead, prepared):
        assert torch.allclose(matte.small_alpha, hysteresis(alpha[None], luma(each.small)), atol=1e-5)


def test_cover_fills_the_frame_without_distortion():
    picture = np.zeros((100, 400, 3), np.uint8)
    picture[:, 150:250] = 255  # a centred square stays a square
    out = cover(picture, 320, 240)
    assert out.shape == (240, 320, 3)
    columns = np.where(out[120, :, 0] > 127)[0]
    assert abs((columns[-1] - columns[0] + 1) - 240) <= 4
