"""Training augmentation (albumentations 2, uint8 in and out, in the workers or the training process) and
normalisation (on the device). The training loader runs the pipeline a batch at a time (`BatchAugment`); the
tools that show or probe augmentation run it per image.

Pipeline, in this order:
1. HorizontalFlip.
2. Shift-scale-rotate as `A.Affine` (ShiftScaleRotate is deprecated in albumentations 2; its draws, applied by
   `LeanAffine`): shift +-6.25 % of the side = +-2 px on 32 px, scale 0.9-1.1 (one factor for both axes),
   rotate +-15 degrees. The shift is given as translate_px=(-2, 2) (a whole number of pixels, uniform), not
   translate_percent: albumentations 2.0.8 truncates percent * side to int, so translate_percent=0.0625 would
   shift by only -1, 0 or +1 px (0 half the time). The uncovered border is filled by reflection
   (BORDER_REFLECT_101, the 1.x ShiftScaleRotate default), so no black wedges appear that the network could
   learn as a cue.
3. CoarseDropout: exactly one 16x16 hole filled with the per-channel dataset mean in pixel units, applied
   before normalisation so the hole normalises to zero. The assignment's `max_width=1` is read as 16:
   it contradicts its own `min_width=16`, and a 1-pixel-wide hole would be meaningless.
4. ToGray keeping three channels.

Default probabilities (the trainer's defaults): flip 0.5, shift-scale-rotate 0.5, hole 0.25, gray 0.05. A
<100k-parameter net underfits CIFAR-10 (on the GPU runs its accuracy on augmented training batches stayed at or
below its test accuracy), so augmentation is kept moderate; grayscale is rare because colour is a strong cue
for several classes. `s7`'s CPU recipes go lighter still (configs/s7.yaml: no rotation, hole 0.15, no gray;
benchmarks/ablations.md has the measurements behind it).

Every transform is built with strict=True, so albumentations 1.x argument names (max_holes, fill_value)
raise instead of being ignored with a warning. The test split gets no worker-side transform at all:
`trainer.loop.normalize` on the device is its whole pipeline.
"""
from __future__ import annotations

import os
import random
from collections.abc import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

HOLE = 16  # CoarseDropout hole side in pixels
SIDE = 32  # CIFAR-10 image side: turns shift_limit (a fraction of the side) into pixels


class LeanAffine(A.Affine):
    """albumentations' Affine, same arguments, same random draws, same pixels, warped by one cv2.warpAffine call.

    Not A.Affine itself: on a 32x32 image its apply spends about 14 times the warp's own time (an identity check
    by np.allclose, channel-chunking wrappers; cProfile, albumentations 2.0.8), most of the in-process
    augmentation that took about a tenth of a CPU epoch. The identity check is not needed: warping by the
    identity returns the image unchanged.
    """

    def apply(self, img: np.ndarray, matrix: np.ndarray, output_shape: tuple[int, int], **params) -> np.ndarray:
        fill = self.fill if isinstance(self.fill, (int, float)) else tuple(self.fill)
        return cv2.warpAffine(img, matrix[:2], (int(round(output_shape[1])), int(round(output_shape[0]))),
                              flags=self.interpolation, borderMode=self.border_mode, borderValue=fill)


def build_train_transform(
    mean_pixels: Sequence[float],
    *,
    flip_p: float = 0.5,
    ssr_p: float = 0.5,
    shift_limit: float = 0.0625,
    scale_limit: float = 0.1,
    rotate_limit: float = 15.0,
    dropout_p: float = 0.25,
    gray_p: float = 0.05,
) -> A.Compose:
    """Flip, shift-scale-rotate, one mean-filled 16x16 hole, grayscale: uint8 HWC in, uint8 HWC out."""
    fill = tuple(int(round(float(m))) for m in mean_pixels)  # the mean colour as a uint8 pixel
    if len(fill) != 3:
        raise ValueError(f"mean_pixels needs 3 channels, got {len(fill)}")
    return A.Compose(
        [
            A.HorizontalFlip(p=flip_p, strict=True),
            LeanAffine(
                translate_px=(-round(shift_limit * SIDE), round(shift_limit * SIDE)),
                scale=(1 - scale_limit, 1 + scale_limit),
                rotate=(-rotate_limit, rotate_limit),
                keep_ratio=True,
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_REFLECT_101,
                p=ssr_p,
                strict=True,
            ),
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(HOLE, HOLE),
                hole_width_range=(HOLE, HOLE),
                fill=fill,
                p=dropout_p,
                strict=True,
            ),
            A.ToGray(num_output_channels=3, p=gray_p, strict=True),
        ],
        strict=True,
    )


class BatchAugment:
    """`build_train_transform`'s pipeline applied to a whole uint8 NHWC batch: for each image, the draws of
    albumentations' transforms (the same distributions, in the same order; probabilities read from the transforms
    at every call, so `set_probabilities` and the ramp apply) and the pixels of their own `apply`; only the flip is
    one slice of the batch.

    Not `A.Compose` per image: with its per-call machinery (shape and key checks, parameter plumbing of four
    transforms) a 32x32 image took about 46 us, against about 13 us here for the same transforms (best timings,
    2026-12-06, this CPU, beside a training); the step waited for it up to a tenth of each CPU epoch. The draws come from one numpy Generator per stream, not the
    transforms' own, so a batch is not the same images `A.Compose` would give, only images of the same law.
    """

    def __init__(self, transform: A.Compose) -> None:
        problem = self.unsupported(transform)
        if problem:
            raise ValueError(f"BatchAugment cannot run this pipeline: {problem}")
        self.flip, self.affine, self.hole, self.gray = transform.transforms

    @staticmethod
    def unsupported(transform: A.BaseCompose) -> str | None:
        """Why `transform` is not a pipeline `build_train_transform` builds (None when it is one)."""
        kinds = [type(t) for t in transform.transforms]
        if kinds != [A.HorizontalFlip, LeanAffine, A.CoarseDropout, A.ToGray]:
            return f"transforms {[k.__name__ for k in kinds]}, not HorizontalFlip, LeanAffine, CoarseDropout, ToGray"
        if transform.p != 1:
            return f"the Compose has p={transform.p}"
        affine, hole = transform.transforms[1], transform.transforms[2]
        if (affine.translate_px is None or affine.shear != {"x": (0.0, 0.0), "y": (0.0, 0.0)} or not affine.keep_ratio
                or affine.balanced_scale or affine.fit_output):
            return "the Affine draws other than translate_px, keep_ratio scale and rotate"
        if (hole.num_holes_range != (1, 1) or len(set(hole.hole_height_range)) != 1
                or len(set(hole.hole_width_range)) != 1 or isinstance(hole.fill, str)):
            return "CoarseDropout other than one hole of a fixed size and a fixed fill"
        return None

    def __call__(self, images: np.ndarray, rng: np.random.Generator, flip: np.ndarray | None = None) -> np.ndarray:
        """Augmented copies of `images` (uint8 NHWC); `images` itself is left unchanged. `flip` (bool per image),
        if given, says which images are flipped in place of the flip's coin (still drawn, so the other draws stay
        the same images' draws)."""
        out = np.array(images, dtype=np.uint8, copy=True)
        n, height, width = out.shape[:3]
        coin = rng.random(n) < self.flip.p
        flip = coin if flip is None else np.asarray(flip, dtype=bool)
        out[flip] = out[flip, :, ::-1]
        warp = np.flatnonzero(rng.random(n) < self.affine.p)
        for i, matrix in zip(warp, self.affine_matrices(len(warp), rng, height, width)):
            out[i] = self.affine.apply(out[i], matrix=matrix, output_shape=(height, width))
        holed = np.flatnonzero(rng.random(n) < self.hole.p)
        h, w = self.hole.hole_height_range[0], self.hole.hole_width_range[0]
        y0, x0 = rng.integers(0, height - h + 1, len(holed)), rng.integers(0, width - w + 1, len(holed))
        for i, y, x in zip(holed, y0, x0):
            out[i] = self.hole.apply(out[i], holes=np.array([[x, y, x + w, y + h]]), seed=0)
        for i in np.flatnonzero(rng.random(n) < self.gray.p):
            out[i] = self.gray.apply(out[i])
        return out

    def affine_matrices(self, k: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """k 2x3 matrices of albumentations' Affine: scale s and rotation r about the pixel-centre of the image,
        then a whole-pixel shift t; x' = s R (x - c) + c + t with R = [[cos, sin], [-sin, cos]]."""
        (tx_lo, tx_hi), (ty_lo, ty_hi) = self.affine.translate_px["x"], self.affine.translate_px["y"]
        tx = rng.integers(int(tx_lo), int(tx_hi) + 1, k)
        ty = rng.integers(int(ty_lo), int(ty_hi) + 1, k)
        scale = rng.uniform(*self.affine.scale["x"], k)
        angle = np.deg2rad(rng.uniform(*self.affine.rotate, k) % 360)
        a, b = scale * np.cos(angle), scale * np.sin(angle)
        cx, cy = width / 2 - 0.5, height / 2 - 0.5
        return np.stack([np.stack([a, b, cx + tx - (a * cx + b * cy)], -1),
                         np.stack([-b, a, cy + ty - (a * cy - b * cx)], -1)], 1)


RAMPED = ("ssr_p", "dropout_p", "gray_p")  # --aug-ramp-epochs: what rises from 0; the flip never does
_PROBABILITY_OF = {A.HorizontalFlip: "flip_p", LeanAffine: "ssr_p", A.CoarseDropout: "dropout_p", A.ToGray: "gray_p"}


def ramped_probabilities(probabilities: dict[str, float], ramp_epochs: int, epoch: int) -> dict[str, float]:
    """The probabilities for `epoch` (1-based) of a run with --aug-ramp-epochs `ramp_epochs`: the RAMPED ones
    scaled by (epoch - 1) / ramp_epochs, capped at 1 (0 in epoch 1, as set from epoch ramp_epochs + 1 on)."""
    scale = min(1.0, (epoch - 1) / ramp_epochs) if ramp_epochs > 0 else 1.0
    return {k: v * scale if k in RAMPED else v for k, v in probabilities.items()}


def set_probabilities(transform: A.BaseCompose, probabilities: dict[str, float]) -> None:
    """Give each transform of `build_train_transform`'s pipeline its probability from `probabilities`
    (flip_p, ssr_p, dropout_p, gray_p; other keys, such as the ranges, are ignored); draws nothing, so the random
    streams are untouched."""
    for t in transform.transforms:
        name = _PROBABILITY_OF.get(type(t))
        if name in probabilities:
            t.p = probabilities[name]


def reseed(transform: A.BaseCompose, seed: int) -> None:
    """Give the whole pipeline one random stream derived from seed.

    Not `Compose.set_random_seed`/`Compose(seed=)`: those seed every child with the same number, so the
    first draws of HorizontalFlip and ToGray coincide and gray images would always be flipped.
    """
    state = np.random.SeedSequence(seed & (2**128 - 1)).generate_state(4, np.uint32)
    transform.set_random_state(np.random.default_rng(state), random.Random(int.from_bytes(state.tobytes(), "little")))


def describe_pipeline(transform: A.BaseCompose | None) -> str:
    """Numbered lines naming each transform and its arguments, for the run report."""
    if transform is None:
        return "(none: normalisation by the dataset mean/std only)"
    lines = []
    for i, t in enumerate(transform.transforms, 1):
        args = t.get_transform_init_args()
        p = args.pop("p", None)
        if args.get("border_mode", cv2.BORDER_CONSTANT) != cv2.BORDER_CONSTANT:
            args.pop("fill", None)  # the border fill only matters for a constant border
        shown = ", ".join(f"{k}={_short(k, v)}" for k, v in args.items() if k not in _NOISE and v is not None)
        lines.append(f"{i}. {type(t).__name__}(p={p}{', ' + shown if shown else ''})")
    if BatchAugment.unsupported(transform) is None:
        lines.append("Applied a batch at a time by BatchAugment: each image drawn as the transforms above draw.")
    return "\n".join(lines)


# Arguments that are defaults irrelevant to image-only pipelines (masks) or always the same here.
_NOISE = {"fill_mask", "mask_interpolation", "balanced_scale", "fit_output", "rotate_method"}
_CV2_NAMES = {
    "border_mode": {cv2.BORDER_REFLECT_101: "reflect_101", cv2.BORDER_CONSTANT: "constant",
                    cv2.BORDER_REFLECT: "reflect", cv2.BORDER_REPLICATE: "replicate"},
    "interpolation": {cv2.INTER_NEAREST: "nearest", cv2.INTER_LINEAR: "linear", cv2.INTER_CUBIC: "cubic"},
}


def _short(key: str, v: object) -> str:
    if key in _CV2_NAMES:
        return _CV2_NAMES[key].get(v, str(v))
    if isinstance(v, dict) and len(v) == 2 and v.get("x") == v.get("y"):
        return str(v["x"])  # {'x': r, 'y': r} -> r
    return str(v)
