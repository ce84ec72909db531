"""Spatial transforms: crop offsets, multi-scale sizes, multi-crop order, flips, resize vs PIL,
normalisation, same geometry for every frame."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tcpnet.data.transforms import (CenterCrop, Compose, FiveCrop, MultiScaleCrop, Normalize,
                                    RandomHorizontalFlip, ResizeShorterSide, TenCrop, ThreeCrop,
                                    build_transform, fixed_crop_offsets, multiscale_crop_sizes,
                                    normalize, parse_views, resize, to_float, to_views)
from tcpnet.input_config import RAW_PIXELS, InputConfig


def coord_clip(H: int, W: int, T: int = 3) -> torch.Tensor:
    """Frames whose pixels encode their own (x, y): R = x & 255, G = y & 255,
    B = (x >> 8) | (y >> 8) << 4. Every frame identical."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx & 255, yy & 255, (xx >> 8) | ((yy >> 8) << 4)], -1).astype(np.uint8)
    return torch.from_numpy(np.repeat(img[None], T, 0))


def xy(pixel: torch.Tensor) -> tuple:
    r, g, b = (int(v) for v in pixel)
    return r + 256 * (b & 15), g + 256 * (b >> 4)


def top_left(clip: torch.Tensor) -> tuple:
    return xy(clip[..., 0, 0, :].reshape(-1, 3)[0])


def test_fixed_offsets_13_in_published_order():
    # 340x256 frame, 224 crop: ws = 29, hs = 8
    assert fixed_crop_offsets(340, 256, 224, 224) == [
        (0, 0), (116, 0), (0, 32), (116, 32), (58, 16),
        (0, 16), (116, 16), (58, 32), (58, 0),
        (29, 8), (87, 8), (29, 24), (87, 24)]
    assert len(fixed_crop_offsets(340, 256, 224, 224, more_fix_crop=False)) == 5


def test_multiscale_sizes_base_256():
    pairs = multiscale_crop_sizes(340, 256, 224)
    assert pairs == [(256, 256), (224, 256),
                     (256, 224), (224, 224), (192, 224),
                     (224, 192), (192, 192), (168, 192),
                     (192, 168), (168, 168)]
    # base 258: int(258 * .875) = 225 is within 3 px of 224 and snaps to it
    assert sorted({w for w, _ in multiscale_crop_sizes(400, 258, 224)}) == [170, 193, 224, 258]


def test_multiscale_crop_lands_on_candidates():
    clip = coord_clip(256, 340)
    t = MultiScaleCrop(224)
    pairs = set(multiscale_crop_sizes(340, 256, 224))
    seen_pairs, seen_offsets = set(), set()
    for seed in range(400):
        x, y, w, h = t.sample_params(256, 340, np.random.default_rng(seed))
        assert (w, h) in pairs and (x, y) in fixed_crop_offsets(340, 256, w, h)
        seen_pairs.add((w, h))
        seen_offsets.add(fixed_crop_offsets(340, 256, w, h).index((x, y)))
        if (w, h) == (224, 224) or seed < 10:
            out = t(clip[:1], np.random.default_rng(seed))
            assert out.shape == (1, 224, 224, 3) and out.dtype == torch.uint8
        if (w, h) == (224, 224):  # no resize: the crop's corners are the frame's pixels
            assert top_left(out) == (x, y)
            assert xy(out[0, -1, -1]) == (x + 223, y + 223)
    assert seen_pairs == pairs and seen_offsets == set(range(13))


def test_multiscale_crop_reproducible_from_generator():
    clip = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 120, 160, 3), dtype=np.uint8))
    t = Compose([MultiScaleCrop(112), RandomHorizontalFlip()])
    a = t(clip, np.random.default_rng(5))
    b = t(clip, np.random.default_rng(5))
    assert torch.equal(a, b)


def test_same_geometry_for_every_frame():
    clip = coord_clip(256, 340, T=4)
    t = build_transform("train", InputConfig())
    for seed in range(10):
        out = t(clip, np.random.default_rng(seed))
        assert all(torch.equal(out[0], out[i]) for i in range(1, 4))


def test_flip_on_and_off():
    ramp = (np.arange(340) * 255 // 339).astype(np.uint8)  # red grows left to right
    clip = torch.from_numpy(np.broadcast_to(ramp[None, None, :, None], (2, 256, 340, 3)).copy())
    flipped = set()
    for seed in range(40):
        out = build_transform("train", InputConfig(), flip=False)(clip, np.random.default_rng(seed))
        assert int(out[0, 0, 0, 0]) < int(out[0, 0, -1, 0])  # x grows left to right: not mirrored
        out = build_transform("train", InputConfig(), flip=True)(clip, np.random.default_rng(seed))
        flipped.add(int(out[0, 0, 0, 0]) > int(out[0, 0, -1, 0]))
    assert flipped == {True, False}
    c = coord_clip(8, 10)
    assert torch.equal(RandomHorizontalFlip(p=1.0)(c), c.flip(2))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(c), c)


def test_center_crop_torchvision_rounding():
    out = CenterCrop(224)(coord_clip(256, 455))
    assert top_left(out) == (116, 16)  # (455-224)/2 = 115.5 -> 116 (half to even)
    assert top_left(CenterCrop(224)(coord_clip(257, 453))) == (114, 16)  # 114.5 -> 114, 16.5 -> 16
    with pytest.raises(ValueError, match="does not fit"):
        CenterCrop(300)(coord_clip(256, 455))


def test_three_crop_left_right_centre():
    out = ThreeCrop(256)(coord_clip(256, 455))  # ws = 49, hs = 0
    assert out.shape == (3, 3, 256, 256, 3)
    assert [top_left(v) for v in out] == [(0, 0), (196, 0), (98, 0)]
    portrait = ThreeCrop(256)(coord_clip(340, 256))  # ws = 0, hs = 21: all three at (0, 42)
    assert [top_left(v) for v in portrait] == [(0, 42)] * 3
    small = ThreeCrop(224)(coord_clip(256, 340))  # ws = 29, hs = 8
    assert [top_left(v) for v in small] == [(0, 16), (116, 16), (58, 16)]


def test_five_and_ten_crop_order():
    clip = coord_clip(256, 340)
    five = FiveCrop(224)(clip)
    assert [top_left(v) for v in five] == [(0, 0), (116, 0), (0, 32), (116, 32), (58, 16)]
    ten = TenCrop(224)(clip)
    assert ten.shape == (10, 3, 224, 224, 3)
    for i in range(5):
        assert torch.equal(ten[2 * i], five[i])
        assert torch.equal(ten[2 * i + 1], five[i].flip(-2))  # mirror right after its crop


def test_resize_shorter_side():
    assert ResizeShorterSide(256)(coord_clip(240, 320)).shape == (3, 256, 341, 3)  # int(256*320/240)
    assert ResizeShorterSide(256)(coord_clip(340, 256)).shape == (3, 340, 256, 3)
    same = coord_clip(256, 340)
    assert ResizeShorterSide(256)(same) is same  # already 256: untouched


def test_resize_matches_pil_bilinear():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (256, 340, 3), dtype=np.uint8)  # worst case for antialiasing
    for (h, w), src in [((224, 224), noise[:, :256]), ((224, 224), noise[:168, :168]),
                        ((224, 297), noise), ((256, 341), noise[:240, :320])]:
        src = np.ascontiguousarray(src)
        ref = np.asarray(Image.fromarray(src).resize((w, h), Image.BILINEAR)).astype(int)
        ours = resize(torch.from_numpy(src)[None], (h, w))[0].numpy().astype(int)
        d = np.abs(ours - ref)
        # PIL and torch round their fixed-point filters differently: at most 1 grey level
        assert d.max() <= 1 and d.mean() < 0.01, (src.shape, d.max(), d.mean())
    # plain bilinear (no antialias) is far from PIL when downscaling noise (documented)
    src = np.ascontiguousarray(noise[:, :256])
    ref = np.asarray(Image.fromarray(src).resize((224, 224), Image.BILINEAR)).astype(int)
    plain = resize(torch.from_numpy(src)[None], (224, 224), antialias=False)[0].numpy().astype(int)
    assert np.abs(plain - ref).max() > 20


def test_normalize_imagenet_bit_exact_with_published():
    cfg = InputConfig()
    rng = np.random.default_rng(1)
    clip = torch.from_numpy(rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8))
    out = to_float(clip, cfg)
    assert out.shape == (3, 4, 6, 5) and out.dtype == torch.float32
    for t in range(4):  # the authors' ToTorchFormatTensor + GroupNormalize, per frame
        ref = clip[t].permute(2, 0, 1).contiguous().float().div(255)
        for c, (m, s) in enumerate(zip(cfg.mean, cfg.std)):
            ref[c].sub_(m).div_(s)
        assert torch.equal(out[:, t], ref)
    # and within float32 rounding of the float64 formula
    ref64 = (clip.double().permute(3, 0, 1, 2) / 255 - torch.tensor(cfg.mean).double().view(3, 1, 1, 1)) \
        / torch.tensor(cfg.std).double().view(3, 1, 1, 1)
    assert torch.allclose(out.double(), ref64, rtol=0, atol=1e-6)
    # pixel 255 in the red channel: (1 - 0.485) / 0.229
    assert abs(float(to_float(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8), cfg)[0, 0, 0, 0])
               - (1 - 0.485) / 0.229) < 1e-6


def test_normalize_raw_pixels_r152():
    cfg = InputConfig(**RAW_PIXELS)
    clip = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 3, 4, 3), dtype=np.uint8))
    out = Normalize(cfg)(clip)
    assert torch.equal(out, clip.permute(3, 0, 1, 2).float())
    assert float(out.max()) <= 255 and float(out.max()) > 1


def test_normalize_batch_on_channels_first():
    cfg = InputConfig()
    x = torch.randint(0, 256, (2, 3, 4, 5, 5), dtype=torch.uint8)
    out = normalize(x, cfg, channel_dim=1)
    assert torch.equal(out[1], to_float(x[1].permute(1, 2, 3, 0), cfg))


def test_to_views_crop_major_then_clip():
    # 3 crops of 2 clips x 4 frames: frame value = crop*100 + clip*10 + t
    clip = torch.zeros(3, 8, 2, 2, 3, dtype=torch.uint8)
    for c in range(3):
        for k in range(2):
            for t in range(4):
                clip[c, k * 4 + t] = c * 100 + k * 10 + t
    views = to_views(clip, num_clips=2)
    assert views.shape == (6, 4, 2, 2, 3)
    assert [int(v[0, 0, 0, 0]) for v in views] == [0, 10, 100, 110, 200, 210]
    assert to_views(clip[0, :4], 1).shape == (4, 2, 2, 3)


def test_test_transform_3x_full_res():
    cfg = InputConfig()
    t = build_transform("test", cfg, num_crops=3)
    out = t(coord_clip(240, 320))  # resized to 256x341, 3 crops of 256
    assert out.shape == (3, 3, 256, 256, 3)
    assert build_transform("test", cfg, num_crops=1)(coord_clip(256, 340)).shape == (3, 224, 224, 3)
    assert build_transform("val", cfg)(coord_clip(256, 340)).shape == (3, 224, 224, 3)


def test_parse_views():
    assert parse_views("3x10") == (3, 10)
    assert parse_views("1x1") == (1, 1)
    for bad in ("3", "2x10", "ax1", "3x0"):
        with pytest.raises(ValueError, match="views"):
            parse_views(bad)
