"""The training augmentation pipeline, its seeding, device-side normalisation and the show-augment grid."""
from __future__ import annotations

import warnings

import albumentations as A
import cv2
import numpy as np
import pytest
from PIL import Image

from trainer import augment
from trainer.augment import (BatchAugment, LeanAffine, build_train_transform, describe_pipeline, reseed,
                             set_probabilities)
from trainer.tools.data import show_augment_command

MEAN = (200.4, 150.6, 100.2)
OFF = dict(flip_p=0.0, ssr_p=0.0, dropout_p=0.0, gray_p=0.0)


def only(**p: float) -> A.Compose:
    t = build_train_transform(MEAN, **{**OFF, **p})
    reseed(t, 0)
    return t


def dark_image(seed: int = 0) -> np.ndarray:
    """Random pixels in 0..60: never equal to the (rounded) mean colour used as fill."""
    return np.random.default_rng(seed).integers(0, 61, (32, 32, 3), dtype=np.uint8)


def halves_image() -> np.ndarray:
    """Bright red left half, dark blue right half: mirroring and graying both stay visible."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :16] = (250, 10, 10)
    img[:, 16:] = (10, 10, 60)
    return img


def test_output_is_uint8_hwc_of_the_input_shape():
    t = build_train_transform(MEAN, flip_p=1, ssr_p=1, dropout_p=1, gray_p=1)
    out = t(image=dark_image())["image"]
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_all_probabilities_zero_changes_nothing():
    t, img = only(), dark_image()
    for _ in range(20):
        np.testing.assert_array_equal(t(image=img)["image"], img)


def test_flip_alone_mirrors_the_image():
    img = dark_image()
    np.testing.assert_array_equal(only(flip_p=1)(image=img)["image"], img[:, ::-1])


def test_affine_shift_is_at_most_two_pixels_on_32px():
    img = np.zeros((32, 32, 3), np.uint8)
    img[14:18, 14:18] = 255  # a bright square in the middle: its centroid tracks the translation
    t = build_train_transform(MEAN, **{**OFF, "ssr_p": 1, "scale_limit": 0.0, "rotate_limit": 0.0})
    reseed(t, 0)
    ys, xs = np.mgrid[:32, :32]

    def centroid(a):
        w = a[..., 0].astype(float)
        return np.array([(w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()])

    shifts = np.array([centroid(t(image=img)["image"]) - centroid(img) for _ in range(300)])
    # 0.0625 * 32 = 2 px: whole-pixel shifts -2..2 on each axis, each value used (about 60 times each)
    np.testing.assert_allclose(shifts, np.round(shifts), atol=1e-9)
    for axis in (0, 1):
        assert sorted(set(np.round(shifts[:, axis]).astype(int))) == [-2, -1, 0, 1, 2]


def test_affine_changes_every_draw_and_reflects_borders():
    img = halves_image()
    t = only(ssr_p=1)
    outs = [t(image=img)["image"] for _ in range(50)]
    assert sum(not np.array_equal(o, img) for o in outs) == 50
    for o in outs:
        assert not (o == 0).all(axis=2).any()  # reflected border: no black (constant-fill) pixels


def test_lean_affine_gives_albumentations_affines_pixels_draw_for_draw():
    """LeanAffine only skips A.Affine's bookkeeping: with the same arguments and seed, every image is the same,
    identity draws (no scale, no shift) included, and with a constant border as well as a reflected one."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    settings = ((cv2.BORDER_REFLECT_101, (0.9, 1.1)), (cv2.BORDER_CONSTANT, (0.8, 1.2)), (cv2.BORDER_CONSTANT, (1, 1)))
    for border, scale in settings:
        args = dict(translate_px=(-2, 2), scale=scale, rotate=(-15, 15), keep_ratio=True,
                    interpolation=cv2.INTER_LINEAR, border_mode=border, fill=(7, 80, 200), p=1.0)
        lean, reference = A.Compose([LeanAffine(**args)]), A.Compose([A.Affine(**args)])
        reseed(lean, 3)
        reseed(reference, 3)
        outs = [(lean(image=im)["image"], reference(image=im)["image"]) for im in images]
        for got, want in outs:
            np.testing.assert_array_equal(got, want)
        assert sum(np.array_equal(got, im) for (got, _), im in zip(outs, images)) < 200  # it did warp


def batch(t: A.Compose, images: np.ndarray, seed: int = 0) -> np.ndarray:
    return BatchAugment(t)(images, np.random.default_rng(seed))


def test_batch_augment_warps_as_albumentations_affine_with_the_same_scale_shift_and_rotation():
    """Fixed draws on both sides (each range a single value): BatchAugment's matrix and warp against A.Affine's."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for scale, tx, ty, rotate in zip(rng.uniform(0.8, 1.2, 12), rng.integers(-3, 4, 12), rng.integers(-3, 4, 12),
                                     rng.uniform(-30, 30, 12)):
        args = dict(translate_px={"x": (int(tx), int(tx)), "y": (int(ty), int(ty))}, scale=(scale, scale),
                    rotate=(rotate, rotate), keep_ratio=True, interpolation=cv2.INTER_LINEAR,
                    border_mode=cv2.BORDER_REFLECT_101, p=1.0, strict=True)
        pipeline = only()
        pipeline.transforms[1] = LeanAffine(**args)
        reference = A.Compose([A.Affine(**args)])
        want = np.stack([reference(image=im)["image"] for im in images])
        np.testing.assert_array_equal(batch(pipeline, images), want)


def test_batch_augment_draws_whole_pixel_shifts_of_at_most_two_and_the_configured_scale_and_angle():
    t = only(ssr_p=1, rotate_limit=15.0)
    m = BatchAugment(t).affine_matrices(4000, np.random.default_rng(0), 32, 32)
    scale = np.sqrt(np.linalg.det(m[:, :, :2]))
    angle = np.degrees(np.arctan2(m[:, 0, 1], m[:, 0, 0]))
    assert 0.9 <= scale.min() < 0.91 and 1.09 < scale.max() <= 1.1
    assert -15 <= angle.min() < -14.5 and 14.5 < angle.max() <= 15
    centre = np.array([15.5, 15.5])
    shift = m[:, :, 2] - (centre - np.einsum("kij,j->ki", m[:, :, :2], centre))  # the offset less the centring
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
    for axis in (0, 1):
        values, counts = np.unique(np.round(shift[:, axis]).astype(int), return_counts=True)
        assert values.tolist() == [-2, -1, 0, 1, 2] and counts.min() > 700  # uniform: 800 each expected


def test_batch_augment_flips_cuts_and_grays_as_the_albumentations_pipeline_does():
    img = dark_image()
    images = np.repeat(img[None], 300, axis=0)
    np.testing.assert_array_equal(batch(only(flip_p=1), images), images[:, :, ::-1])
    np.testing.assert_array_equal(batch(only(gray_p=1), images),
                                  np.broadcast_to(only(gray_p=1)(image=img)["image"], images.shape))
    fill = np.round(MEAN).astype(np.uint8)
    reference = only(dropout_p=1)
    for outs in (batch(only(dropout_p=1), images), [reference(image=img)["image"] for _ in range(300)]):
        corners = []
        for out in outs:
            rows, cols = np.nonzero(hole_mask(out, img))
            assert len(rows) == 16 * 16 and np.ptp(rows) == np.ptp(cols) == 15
            np.testing.assert_array_equal(out[rows, cols], np.broadcast_to(fill, (256, 3)))
            corners.append((rows.min(), cols.min()))
        # anywhere inside the image, each of the 17 rows and columns: 300 draws miss one with odds of about 1e-7
        assert {r for r, _ in corners} == {c for _, c in corners} == set(range(17))

def test_batch_augment_reads_each_probability_at_every_call():
    t = only(flip_p=0.3, gray_p=0.5)
    images = np.repeat(halves_image()[None], 4000, axis=0)
    out = batch(t, images).astype(int)
    gray = (out[..., 0] == out[..., 1]).all(axis=(1, 2)) & (out[..., 1] == out[..., 2]).all(axis=(1, 2))
    brightness = out.mean(axis=3)
    flipped = brightness[:, :, :16].mean(axis=(1, 2)) < brightness[:, :, 16:].mean(axis=(1, 2))
    # binomial sd about 29 and 32: independent coins at the configured rates
    assert abs(flipped.sum() - 1200) < 150 and abs(gray.sum() - 2000) < 150
    assert abs((flipped & gray).sum() - 600) < 150
    set_probabilities(t, {"flip_p": 0.0, "gray_p": 0.0})  # as --aug-ramp-epochs does at epoch 1
    np.testing.assert_array_equal(batch(t, images), images)


def test_batch_augment_reproduces_its_stream_and_leaves_the_stored_images_alone():
    t = build_train_transform(MEAN, ssr_p=1, dropout_p=1, gray_p=0.5)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    kept = images.copy()
    np.testing.assert_array_equal(batch(t, images, seed=4), batch(t, images, seed=4))
    assert not np.array_equal(batch(t, images, seed=4), batch(t, images, seed=5))
    np.testing.assert_array_equal(images, kept)


def test_a_given_flip_replaces_only_the_coin_and_leaves_every_other_draw_as_it_was():
    t = build_train_transform(MEAN, ssr_p=0.7, dropout_p=0.5, gray_p=0.3)
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    coin = np.random.default_rng(9).random(64) < 0.5  # the stream's first draws: the flip's coin
    free = BatchAugment(t)(images, np.random.default_rng(9))
    np.testing.assert_array_equal(BatchAugment(t)(images, np.random.default_rng(9), flip=coin), free)
    inverted = BatchAugment(t)(images, np.random.default_rng(9), flip=~coin)
    # the same warps, holes and grays on the other side of each image: those of unflipped mirrored copies where
    # ~coin flips, of the unflipped images elsewhere
    none = np.zeros(64, bool)
    mirrored = BatchAugment(t)(images[:, :, ::-1], np.random.default_rng(9), flip=none)
    plain = BatchAugment(t)(images, np.random.default_rng(9), flip=none)
    np.testing.assert_array_equal(inverted, np.where(~coin[:, None, None, None], mirrored, plain))
    assert not np.array_equal(inverted, free)


def test_batch_augment_refuses_a_pipeline_it_would_run_differently():
    t = build_train_transform(MEAN)
    t.transforms[2] = A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(16, 16),
                                      hole_width_range=(16, 16), fill=0, p=1.0)
    assert "one hole" in BatchAugment.unsupported(t)
    with pytest.raises(ValueError, match="BatchAugment cannot run this pipeline"):
        BatchAugment(t)
    assert BatchAugment.unsupported(build_train_transform(MEAN)) is None


def hole_mask(out: np.ndarray, img: np.ndarray) -> np.ndarray:
    return (out != img).any(axis=2)


def test_dropout_alone_cuts_one_16x16_hole_of_exactly_the_mean_colour():
    img, t = dark_image(), only(dropout_p=1)
    fill = np.round(MEAN).astype(np.uint8)
    for _ in range(30):
        out = t(image=img)["image"]
        rows, cols = np.nonzero(hole_mask(out, img))
        assert rows.max() - rows.min() + 1 == 16 and cols.max() - cols.min() + 1 == 16
        assert len(rows) == 16 * 16  # a full square, inside the image
        np.testing.assert_array_equal(out[rows, cols], np.broadcast_to(fill, (256, 3)))


def test_dropout_fill_follows_the_dataset_mean():
    img = dark_image()
    for mean in [(10.4, 220.6, 90.0), (255.0, 0.0, 127.5)]:
        t = build_train_transform(mean, **{**OFF, "dropout_p": 1})
        out = t(image=img)["image"]
        rows, cols = np.nonzero((out != img).any(axis=2))
        assert len(rows) > 0
        np.testing.assert_array_equal(np.unique(out[rows, cols], axis=0), [np.round(mean).astype(np.uint8)])


def test_gray_alone_gives_three_equal_channels_of_the_luminance():
    img = halves_image()
    out = only(gray_p=1)(image=img)["image"].astype(float)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    luminance = img.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(out[..., 0] - luminance).max() <= 1


def flips_and_grays(t: A.Compose, n: int) -> tuple[np.ndarray, np.ndarray]:
    img = halves_image()
    flipped, gray = [], []
    for _ in range(n):
        out = t(image=img)["image"].astype(int)
        gray.append((out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all())
        brightness = out.mean(axis=2)
        flipped.append(brightness[:, :16].mean() < brightness[:, 16:].mean())
    return np.array(flipped), np.array(gray)


def test_flip_and_gray_decisions_are_independent():
    t = only(flip_p=0.5, gray_p=0.5)
    flipped, gray = flips_and_grays(t, 2000)
    # independent coins: each about 1000, both about 500 (binomial sd about 19)
    assert abs(flipped.sum() - 1000) < 100 and abs(gray.sum() - 1000) < 100
    assert abs((flipped & gray).sum() - 500) < 100


def test_reseed_reproduces_and_different_seeds_differ():
    img = dark_image()

    def stream(seed):
        t = build_train_transform(MEAN, ssr_p=1, dropout_p=1)
        reseed(t, seed)
        return np.stack([t(image=img)["image"] for _ in range(10)])

    np.testing.assert_array_equal(stream(5), stream(5))
    assert not np.array_equal(stream(5), stream(6))


def test_every_transform_is_built_strict(monkeypatch):
    seen = {}
    for where, name in [(A, "HorizontalFlip"), (augment, "LeanAffine"), (A, "CoarseDropout"), (A, "ToGray"),
                        (A, "Compose")]:
        original = getattr(where, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            seen[_name] = kwargs.get("strict")
            return _original(*args, **kwargs)

        monkeypatch.setattr(where, name, spy)
    build_train_transform(MEAN)
    assert seen == dict.fromkeys(["HorizontalFlip", "LeanAffine", "CoarseDropout", "ToGray", "Compose"], True)


def test_building_and_applying_the_pipeline_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = build_train_transform(MEAN, flip_p=1, ssr_p=1, dropout_p=1, gray_p=1)
        t(image=dark_image())




def test_describe_pipeline_without_a_transform_says_normalisation_only():
    assert "normalisation" in describe_pipeline(None)


def test_describe_pipeline_names_each_transform_and_its_arguments():
    text = describe_pipeline(build_train_transform(MEAN, dropout_p=0.25))
    lines = text.splitlines()
    assert [line.split("(")[0] for line in lines[:4]] == ["1. HorizontalFlip", "2. LeanAffine",
                                                           "3. CoarseDropout", "4. ToGray"]
    assert lines[4].startswith("Applied a batch at a time by BatchAugment")
    assert "p=0.25" in lines[2] and "hole_height_range=(16, 16)" in lines[2] and "fill=(200.0, 151.0, 100.0)" in lines[2]
    assert "border_mode=reflect_101" in lines[1] and "rotate=(-15.0, 15.0)" in lines[1]
    assert "translate_px=(-2.0, 2.0)" in lines[1] and "scale=(0.9, 1.1)" in lines[1]
    assert "num_output_channels=3" in lines[3]


def test_show_augment_writes_a_png_grid(tmp_path, capsys):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(dark_image(i)).save(tmp_path / "tree" / split / cls / f"{i}.png")
    out = tmp_path / "grid" / "aug.png"
    assert show_augment_command(str(tmp_path / "tree"), str(tmp_path / "cache"), str(out), 2, 3, 0) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > png.height / 2
