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


def _jpeg(w, h, fmt="JPEG"):
    import io

    # A smooth picture: DCT-scaled decoding of it stays close to a full decode and resize.
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, quality=95)
    return buf.getvalue()


def test_big_jpeg_is_decoded_at_reduced_scale_and_matches_a_full_decode():
    import io

    from clipfleet_worker.data import transforms as T

    data = _jpeg(1024, 768)
    img = Image.open(io.BytesIO(data))
    box = T.source_box(T.center_geometry(1024, 768, 64), 1024, 768)
    scaled = T.draft_box(img, box, 64)
    assert img.size == (128, 96)  # 1/8: the 768 px centre square becomes 96 px, still >= 64
    assert scaled == tuple(v / 8 for v in box)
    drafted = image_transform(Image.open(io.BytesIO(data)), 64, None, 0, 0, "k")
    full = Image.open(io.BytesIO(data))
    full.load()  # loaded first: no draft
    reference = image_transform(full, 64, None, 0, 0, "k")
    assert drafted.shape == reference.shape == (3, 64, 64)
    assert (drafted - reference).abs().mean() < 0.02


def test_small_regions_and_other_formats_are_decoded_in_full():
    import io

    from clipfleet_worker.data import transforms as T

    small = Image.open(io.BytesIO(_jpeg(200, 150)))
    box = T.source_box(T.center_geometry(200, 150, 96), 200, 150)
    assert T.draft_box(small, box, 96) == box and small.size == (200, 150)
    png = Image.open(io.BytesIO(_jpeg(1024, 768, "PNG")))
    box = T.source_box(T.center_geometry(1024, 768, 64), 1024, 768)
    assert T.draft_box(png, box, 64) == box and png.size == (1024, 768)


def test_normalised_tensor_written_in_place_equals_a_new_one():
    from clipfleet_worker.data.transforms import to_normalized_tensor

    img = _noise_image(40, 40)
    batch = torch.full((2, 3, 40, 40), float("nan"))
    got = to_normalized_tensor(img, batch[1])
    assert got.data_ptr() == batch[1].data_ptr()
    expected = (torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0 - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose(batch[1], expected, atol=1e-5)
    assert torch.equal(to_normalized_tensor(img), batch[1])
    gray = img.convert("L")
    assert torch.equal(to_normalized_tensor(gray), to_normalized_tensor(gray.convert("RGB")))  # converted to RGB first
