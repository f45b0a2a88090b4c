import numpy as np
import torch
from PIL import Image

from clipfleet_worker.data import (
    CLIP_MEAN,
    CLIP_STD,
    AugmentParams,
    image_transform,
    joint_transform,
    sample_geometry,
)

AUG = AugmentParams(crop_scale=(0.3, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5)


def _noise_image(w=64, h=48, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_augment_is_deterministic_per_key_and_varies_across_keys_and_epochs():
    img = _noise_image()
    a = image_transform(img, 32, AUG, 5, 2, "key-1")
    b = image_transform(img, 32, AUG, 5, 2, "key-1")
    assert torch.equal(a, b)
    assert not torch.equal(a, image_transform(img, 32, AUG, 5, 2, "key-2"))
    assert not torch.equal(a, image_transform(img, 32, AUG, 5, 3, "key-1"))


def test_geometry_follows_random_resized_crop_bounds():
    flips = 0
    for i in range(500):
        g = sample_geometry(64, 48, 32, AUG, 0, 0, str(i))
        left, top, right, bottom = g.box
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 64 and 0 <= top and bottom <= 48
        assert 0.3 * 64 * 48 * 0.9 <= w * h <= 64 * 48
        flips += g.flip
    assert 200 < flips < 300


def test_val_transform_is_center_crop_and_normalised():
    # Left/right thirds red, middle square white: the center crop sees only white.
    arr = np.zeros((32, 96, 3), np.uint8)
    arr[:, :32] = (255, 0, 0)
    arr[:, 32:64] = 255
    arr[:, 64:] = (255, 0, 0)
    out = image_transform(Image.fromarray(arr), 16, None, 0, 0, "k")
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    # Resize-then-crop (torchvision order) lets bicubic mix in the red at the crop's outer columns.
    assert torch.allclose(out[:, :, 2:-2].mean(dim=(1, 2)), expected, atol=1e-3)
    assert (out[1:, :, 0] < expected[1:, None]).all()
    tall = image_transform(Image.fromarray(arr.transpose(1, 0, 2).copy()), 16, None, 0, 0, "k")
    assert torch.allclose(tall[:, 2:-2, :].mean(dim=(1, 2)), expected, atol=1e-3)


def test_joint_transform_keeps_seg_and_depth_aligned_with_the_image():
    # 16 px blocks; the block id is encoded in the red channel, the seg and the depth.
    h, w, n = 64, 96, 16
    ids = (np.arange(h)[:, None] // n) * 6 + (np.arange(w)[None, :] // n)
    rgb = np.stack([ids * 10, np.zeros_like(ids), np.zeros_like(ids)], -1).astype(np.uint8)
    seg = Image.fromarray(ids.astype(np.uint8), mode="L")
    depth = Image.fromarray((ids * 100 + 1000).astype(np.uint16))
    aug = AugmentParams(crop_scale=(0.5, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=0.5)
    mean, std = CLIP_MEAN[0], CLIP_STD[0]
    flipped = 0
    for key in range(20):
        image, s, d = joint_transform(Image.fromarray(rgb), seg, depth, 24, aug, 0, 0, str(key))
        assert s.shape == d.shape == (24, 24)
        assert np.array_equal(d, s * 100 + 1000)  # depth and seg saw the same pixels
        red_ids = np.rint((image[0].numpy() * std + mean) * 255.0 / 10.0)
        # Away from block borders (where bicubic mixes neighbours) the image must show the seg's block.
        pad = np.pad(s, 1, mode="edge")
        interior = np.ones_like(s, dtype=bool)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                interior &= pad[dy : dy + 24, dx : dx + 24] == s
        assert interior.mean() > 0.3
        assert (red_ids[interior] == s[interior]).mean() > 0.97, key
        flipped += sample_geometry(w, h, 24, aug, 0, 0, str(key)).flip
    assert 0 < flipped < 20  # both branches exercised


def test_joint_transform_flip_mirrors_maps():
    ids = np.tile(np.arange(32, dtype=np.uint8), (32, 1))
    img = Image.fromarray(np.stack([ids * 8] * 3, -1))
    aug = AugmentParams(crop_scale=None, crop_ratio=(1.0, 1.0), hflip=1.0)
    _, s, _ = joint_transform(img, Image.fromarray(ids, mode="L"), None, 32, aug, 0, 0, "k")
    assert np.array_equal(s[0], np.arange(31, -1, -1))
