"""LR/HR pairs for super-resolution: random HR crops of real photos, each downscaled with bicubic (antialiased, PIL)
to its LR input, the usual synthetic degradation of SR benchmarks (Ledig et al. 2017 §3.2; BasicSR's DIV2K sets).

The photos are the ones bundled with scikit-image and scikit-learn, so nothing is downloaded. Two of them are held
out of training for evaluation (`HELD_OUT_PHOTOS`); `held_out_pairs` gives them whole (cropped to a multiple of the
scale), and `score_held_out` scores any upscaler on them with PSNR / SSIM on the Y channel and a border crop equal
to the scale, as BasicSR reports SR. A user's folder of images (`--train_data_dir`) replaces the training photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "china", "motorcycle")
HELD_OUT_PHOTOS = ("chelsea", "flower")  # never in training: the evaluation set


def bundled_photo(name: str) -> Image.Image:
    """One RGB photo shipped inside scikit-image / scikit-learn, as a PIL image."""
    from skimage import data as skdata

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        array = load_sample_image(f"{name}.jpg")
    elif name == "motorcycle":
        array = skdata.stereo_motorcycle()[0]  # the left view of the stereo pair
    elif name in ("astronaut", "chelsea", "coffee", "rocket"):
        array = getattr(skdata, name)()
    else:
        raise ValueError(f"photo must be one of {[*TRAIN_PHOTOS, *HELD_OUT_PHOTOS]}, got {name!r}")
    return Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")


def modcrop(image: Image.Image, scale: int) -> Image.Image:
    """Crop the right / bottom edge so both sides are multiples of `scale` (LR and HR then align exactly)."""
    w, h = image.size
    return image.crop((0, 0, w - w % scale, h - h % scale))


def bicubic_downscale(hr: Image.Image, scale: int) -> Image.Image:
    """The degradation: PIL bicubic (a = −0.5, antialiased like MATLAB's imresize) to 1/scale of each side."""
    w, h = hr.size
    if w % scale or h % scale:
        raise ValueError(f"the HR image's sides {hr.size} must be multiples of scale={scale} (use modcrop)")
    return hr.resize((w // scale, h // scale), Image.Resampling.BICUBIC)


def bicubic_upscale(lr: Image.Image, scale: int) -> Image.Image:
    """The baseline every SR model is compared with: PIL bicubic upscaling by `scale`."""
    return lr.resize((lr.width * scale, lr.height * scale), Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL → float [C, H, W] in [0, 1]."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _augment(image: Image.Image, generator: torch.Generator) -> Image.Image:
    """Random horizontal / vertical flips and transpose: the 8 dihedral symmetries of a square crop (BasicSR)."""
    for op in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE):
        if torch.rand((), generator=generator).item() < 0.5:
            image = image.transpose(op)
    return image


class PairedPatchDataset(torch.utils.data.Dataset):
    """`num_patches` random (LR, HR) crop pairs of `images`: item i is `{"lr": [C, h, w], "hr": [C, H, W]}` in
    [-1, 1], H = W = `hr_size`, h = H / `scale`.

    Item i is drawn by its own generator seeded from (`seed`, i), so the crops are the same in every epoch, on
    every rank and after a resume; the image is picked with probability ∝ its area. Images smaller than `hr_size`
    are enlarged (bicubic) first.
    """

    def __init__(
        self,
        images: Sequence[Image.Image],
        hr_size: int,
        scale: int,
        num_patches: int = 4096,
        seed: int = 0,
        channels: int = 3,
        augment: bool = True,
    ):
        if len(images) == 0:
            raise ValueError("images must hold at least one image")
        if hr_size < 1 or hr_size % scale:
            raise ValueError(f"hr_size must be a positive multiple of scale={scale}, got {hr_size}")
        if num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {num_patches}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.images, self.hr_size, self.scale = images, hr_size, scale
        self.num_patches, self.seed, self.channels, self.augment = num_patches, seed, channels, augment
        self.sizes = [image.size for image in images]
        areas = torch.tensor([max(w, hr_size) * max(h, hr_size) for w, h in self.sizes], dtype=torch.float64)
        self.weights = areas / areas.sum()

    def __len__(self) -> int:
        return self.num_patches

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.num_patches:
            raise IndexError(f"patch index {i} out of range [0, {self.num_patches})")
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        image = self.images[int(torch.multinomial(self.weights, 1, generator=generator))]
        return random_pair(image, self.hr_size, self.scale, self.channels, generator, self.augment)


def random_pair(
    image: Image.Image, hr_size: int, scale: int, channels: int, generator: torch.Generator, augment: bool = True
) -> dict[str, torch.Tensor]:
    """One (LR, HR) pair of `image`: a random `hr_size` crop (the image enlarged first when smaller), flipped and
    transposed at random (`augment`), bicubic-downscaled to its LR input; all randomness from `generator`. Both in
    [-1, 1]: `{"lr": [C, h, w], "hr": [C, H, W]}`. A stream's examples (`--train_shards`) each give one."""
    image = image.convert("L" if channels == 1 else "RGB")
    if min(image.size) < hr_size:
        factor = hr_size / min(image.size)
        size = (max(hr_size, round(image.width * factor)), max(hr_size, round(image.height * factor)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    left = int(torch.randint(0, image.width - hr_size + 1, (), generator=generator))
    top = int(torch.randint(0, image.height - hr_size + 1, (), generator=generator))
    hr = image.crop((left, top, left + hr_size, top + hr_size))
    if augment:
        hr = _augment(hr, generator)
    lr = bicubic_downscale(hr, scale)
    return {"lr": to_tensor(lr) * 2 - 1, "hr": to_tensor(hr) * 2 - 1}


def collate_pairs(items: list[dict]) -> dict[str, torch.Tensor]:
    """→ {"lr_pixel_values": [B, C, h, w], "pixel_values": [B, C, H, W]}, both in [-1, 1]."""
    return {
        "lr_pixel_values": torch.stack([item["lr"] for item in items]),
        "pixel_values": torch.stack([item["hr"] for item in items]),
    }


class _ImageColumn(Sequence):
    """The image column of a `datasets.Dataset`, decoded on access (a user's folder need not fit in memory)."""

    def __init__(self, dataset, column: str):
        if column not in dataset.column_names:
            raise ValueError(f"--image_column={column!r} is not a column of the dataset {dataset.column_names}")
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[int(i)][self.column]


def training_images(
    dataset_name: str | None = "photos", train_data_dir: str | None = None, image_column: str = "image", **kwargs
) -> Sequence[Image.Image]:
    """HR training images: the bundled `TRAIN_PHOTOS` for `dataset_name="photos"`, else any image dataset or
    folder `custom_pipelines.data.load_image_dataset` reads (`kwargs` go to it)."""
    if dataset_name == "photos" and train_data_dir is None:
        return [bundled_photo(name) for name in TRAIN_PHOTOS]
    from custom_pipelines.data import load_image_dataset

    return _ImageColumn(load_image_dataset(dataset_name, train_data_dir, **kwargs), image_column)


def held_out_pairs(scale: int, channels: int = 3, names: Sequence[str] = HELD_OUT_PHOTOS) -> list[tuple]:
    """The evaluation photos whole: (name, LR PIL image, HR PIL image), HR cropped to multiples of `scale`."""
    pairs = []
    for name in names:
        hr = modcrop(bundled_photo(name).convert("L" if channels == 1 else "RGB"), scale)
        pairs.append((name, bicubic_downscale(hr, scale), hr))
    return pairs


def sr_scores(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> dict[str, torch.Tensor]:
    """PSNR / SSIM per image ([N] each) on the Y channel with `scale` border pixels cropped (BasicSR), and the
    no-reference sharpness; `sr` and `hr` [N, C, H, W] in [0, 1]."""
    from custom_pipelines.evaluation.image_quality import psnr, sharpness, ssim

    sr = sr.float().clamp(0, 1)
    return {
        "psnr_y": psnr(sr, hr, crop_border=scale, y_channel=True),
        "ssim_y": ssim(sr, hr, crop_border=scale, y_channel=True),
        "sharpness": sharpness(sr[..., scale:-scale, scale:-scale]),
    }


def score_held_out(
    upscale: Callable[[Image.Image], torch.Tensor],
    scale: int,
    channels: int = 3,
    names: Sequence[str] = HELD_OUT_PHOTOS,
) -> dict[str, dict[str, float]]:
    """Mean PSNR_Y / SSIM_Y / sharpness over the held-out photos for `upscale(lr PIL) -> [1, C, H, W] in [0, 1]`
    and for bicubic upscaling: {"model": {...}, "bicubic": {...}}, and per photo under "per_image"."""
    totals: dict[str, dict[str, list[float]]] = {"model": {}, "bicubic": {}}
    per_image, all_outputs = {}, {}
    for name, lr, hr in held_out_pairs(scale, channels, names):
        hr_t = to_tensor(hr)[None]
        outputs = {"model": upscale(lr).float().cpu(), "bicubic": to_tensor(bicubic_upscale(lr, scale))[None]}
        all_outputs[name] = {**outputs, "hr": hr_t}
        per_image[name] = {}
        for which, sr in outputs.items():
            if sr.shape != hr_t.shape:
                raise ValueError(f"upscale gave shape {tuple(sr.shape)} for {name}, expected {tuple(hr_t.shape)}")
            scores = {k: float(v.mean()) for k, v in sr_scores(sr, hr_t, scale).items()}
            per_image[name][which] = scores
            for key, value in scores.items():
                totals[which].setdefault(key, []).append(value)
    result = {which: {k: float(np.mean(v)) for k, v in scores.items()} for which, scores in totals.items()}
    result["per_image"], result["outputs"] = per_image, all_outputs
    return result


# (x, y) centres of the comparison crops, as fractions of the photo's width and height: detail-rich regions
CROP_CENTRES = {"chelsea": ((0.42, 0.40), (0.70, 0.55)), "flower": ((0.50, 0.45), (0.62, 0.30))}
STRIP_GAP = 2  # white pixels between the columns of a strip


def comparison_strips(
    outputs: dict[str, dict[str, torch.Tensor]],
    columns: Sequence[str] = ("bicubic", "model", "hr"),
    num_strips: int = 4,
    crop_size: int = 96,
) -> torch.Tensor:
    """Side-by-side crops [N, C, crop, k·crop + gaps] in [0, 1]: for each photo of `score_held_out(...)["outputs"]`
    and crop centre (`CROP_CENTRES`, else the image centre), the `columns` (e.g. bicubic | SR | HR) of one region,
    at most `num_strips` strips."""
    strips = []
    for name, images in outputs.items():
        h, w = images["hr"].shape[-2:]
        size = min(crop_size, h, w)
        for fx, fy in CROP_CENTRES.get(name, ((0.5, 0.5),)):
            top = min(max(0, round(fy * h) - size // 2), h - size)
            left = min(max(0, round(fx * w) - size // 2), w - size)
            crops = [images[c][0, :, top : top + size, left : left + size].clamp(0, 1) for c in columns]
            gap = torch.ones(crops[0].shape[0], size, STRIP_GAP)
            parts = [part for crop in crops for part in (crop, gap)][:-1]
            strips.append(torch.cat(parts, dim=-1))
    if not strips:
        raise ValueError("outputs holds no images")
    size = min(s.shape[-2] for s in strips)
    strips = [s for s in strips if s.shape[-2] == size]
    return torch.stack(strips[:num_strips])
