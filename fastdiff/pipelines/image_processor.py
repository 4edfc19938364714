"""Images in and out of the VAE, with the semantics of Diffusers' `VaeImageProcessor`.

In: PIL images, numpy arrays (HWC or NHWC, floats in [0, 1]), tensors (CHW or NCHW in [0, 1]),
or lists of them -> an NCHW float tensor in [-1, 1], resized to a multiple of the VAE scale
factor. A tensor with `vae_latent_channels` channels is taken as latents and passed through.
Out: NCHW tensors in [-1, 1] -> "pt" (NCHW in [0, 1]), "np" (NHWC float32), "pil", or "latent".

One deliberate difference from Diffusers: RGBA and grayscale *images* (PIL, or numpy with 1, 2 or
4 channels) are converted to RGB, so a 4-channel RGBA picture is never mistaken for latents.
The mask processor (do_convert_grayscale=True) converts to one channel instead.
"""

from __future__ import annotations

import warnings

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F

from ..configuration import ConfigMixin, register_to_config

RESAMPLE = {
    "linear": PIL.Image.Resampling.BILINEAR,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "nearest": PIL.Image.Resampling.NEAREST,
}
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """(B, H, W, C) or (H, W, C) floats in [0, 1] -> a list of PIL images (mode L for one channel)."""
    if images.ndim == 3:
        images = images[None, ...]
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [PIL.Image.fromarray(image.squeeze(), mode="L") for image in images]
    return [PIL.Image.fromarray(image) for image in images]


def pil_to_numpy(images) -> np.ndarray:
    images = images if isinstance(images, list) else [images]
    return np.stack([np.array(image).astype(np.float32) / 255.0 for image in images], axis=0)


def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
    if images.ndim == 3:
        images = images[..., None]
    return torch.from_numpy(images.transpose(0, 3, 1, 2))


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    return images.cpu().permute(0, 2, 3, 1).float().numpy()


def _is_image(x) -> bool:
    return isinstance(x, PIL.Image.Image) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim in (2, 3))


def _is_image_batch(x) -> bool:
    if isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4:
        return True
    if _is_image(x):
        return True
    return isinstance(x, list) and len(x) > 0 and all(_is_image(i) for i in x)


class VaeImageProcessor(ConfigMixin):
    """Pre- and post-processing around the VAE.

    Example:
        >>> processor = VaeImageProcessor(vae_scale_factor=8)
        >>> x = processor.preprocess(pil_image)          # (1, 3, H', W') in [-1, 1]
        >>> images = processor.postprocess(decoded, output_type="pil")
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, do_resize: bool = True, vae_scale_factor: int = 8, vae_latent_channels: int = 4,
                 resample: str = "lanczos", reducing_gap: int | None = None, do_normalize: bool = True,
                 do_binarize: bool = False, do_convert_rgb: bool = False, do_convert_grayscale: bool = False):
        if do_convert_rgb and do_convert_grayscale:
            raise ValueError("`do_convert_rgb` and `do_convert_grayscale` can not both be set to `True`.")
        if resample not in RESAMPLE:
            raise ValueError(f"resample={resample!r} is not one of {list(RESAMPLE)}")

    numpy_to_pil = staticmethod(numpy_to_pil)
    pil_to_numpy = staticmethod(pil_to_numpy)
    numpy_to_pt = staticmethod(numpy_to_pt)
    pt_to_numpy = staticmethod(pt_to_numpy)

    @staticmethod
    def normalize(images):
        return 2.0 * images - 1.0

    @staticmethod
    def denormalize(images):
        return (images * 0.5 + 0.5).clamp(0, 1)

    # ---- sizes ----------------------------------------------------------------------------------

    def get_default_height_width(self, image, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """The image's own size where not given, rounded down to a multiple of the VAE scale factor."""
        if isinstance(image, PIL.Image.Image):
            h, w = image.height, image.width
        elif isinstance(image, torch.Tensor):
            h, w = image.shape[2], image.shape[3]
        else:
            h, w = image.shape[1], image.shape[2]
        height, width = height or h, width or w
        f = self.config.vae_scale_factor
        return height - height % f, width - width % f

    def resize(self, image, height: int, width: int, resize_mode: str = "default"):
        """PIL: resample ("default"), or "fill" / "crop" keeping the aspect ratio; arrays: nearest."""
        if resize_mode != "default" and not isinstance(image, PIL.Image.Image):
            raise ValueError(f"Only PIL image input is supported for resize_mode {resize_mode}")
        if isinstance(image, PIL.Image.Image):
            if resize_mode == "default":
                return image.resize((width, height), resample=RESAMPLE[self.config.resample],
                                    reducing_gap=self.config.reducing_gap)
            if resize_mode == "fill":
                return self._resize_and_fill(image, width, height)
            if resize_mode == "crop":
                return self._resize_and_crop(image, width, height)
            raise ValueError(f"resize_mode {resize_mode} is not supported")
        if isinstance(image, np.ndarray):
            return pt_to_numpy(F.interpolate(numpy_to_pt(image), size=(height, width)))
        return F.interpolate(image, size=(height, width))

    def _resize_and_crop(self, image, width, height):
        """Scale to cover (width, height), centred; the overflow is cut off."""
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), resample=RESAMPLE[self.config.resample])
        out = PIL.Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return out

    def _resize_and_fill(self, image, width, height):
        """Scale to fit inside (width, height), centred; the empty bands repeat the edge rows/columns."""
        ratio, src_ratio = width / height, image.width / image.height
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
        resized = image.resize((src_w, src_h), resample=RESAMPLE[self.config.resample])
        out = PIL.Image.new("RGB", (width, height))
        out.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        if ratio < src_ratio and height // 2 - src_h // 2 > 0:
            fill = height // 2 - src_h // 2
            out.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            out.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                      box=(0, fill + src_h))
        elif ratio > src_ratio and width // 2 - src_w // 2 > 0:
            fill = width // 2 - src_w // 2
            out.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            out.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                      box=(fill + src_w, 0))
        return out

    # ---- in -------------------------------------------------------------------------------------

    def _to_mode(self, image: PIL.Image.Image) -> PIL.Image.Image:
        if self.config.do_convert_grayscale:
            return image.convert("L")
        return image.convert("RGB") if image.mode != "RGB" else image

    def _numpy_channels(self, images: np.ndarray) -> np.ndarray:
        """NHWC numpy images: 1/2/4 channels become RGB (alpha dropped), unless grayscale is wanted."""
        if self.config.do_convert_grayscale:
            return images
        c = images.shape[-1]
        if c in (1, 2):
            return np.repeat(images[..., :1], 3, axis=-1)
        return images[..., :3] if c == 4 else images

    def preprocess(self, image, height: int | None = None, width: int | None = None, resize_mode: str = "default",
                   crops_coords: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """Any supported image input -> NCHW float tensor (in [-1, 1] when normalizing)."""
        if self.config.do_convert_grayscale and isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 3:
            if isinstance(image, torch.Tensor):
                image = image.unsqueeze(1)
            else:
                image = np.expand_dims(image, axis=0 if image.shape[-1] == 1 else -1)
        if isinstance(image, list) and image and isinstance(image[0], (np.ndarray, torch.Tensor)) and image[0].ndim == 4:
            warnings.warn("Passing a list of 4d arrays is deprecated; concatenate them along the batch.", FutureWarning)
            image = np.concatenate(image, axis=0) if isinstance(image[0], np.ndarray) else torch.cat(image, dim=0)
        if not _is_image_batch(image):
            raise ValueError(
                f"image must be a PIL image, a numpy array, a torch tensor, or a list of them; got {type(image).__name__}"
            )
        images = image if isinstance(image, list) else [image]
        if isinstance(images[0], PIL.Image.Image):
            if crops_coords is not None:
                images = [i.crop(crops_coords) for i in images]
            if self.config.do_resize:
                height, width = self.get_default_height_width(images[0], height, width)
                images = [self.resize(i, height, width, resize_mode=resize_mode) for i in images]
            images = numpy_to_pt(pil_to_numpy([self._to_mode(i) for i in images]))
        elif isinstance(images[0], np.ndarray):
            arr = np.concatenate(images, axis=0) if images[0].ndim == 4 else np.stack(images, axis=0)
            if arr.ndim == 3:  # a batch of HW grayscale arrays
                arr = arr[..., None]
            images = numpy_to_pt(self._numpy_channels(arr))
            height, width = self.get_default_height_width(images, height, width)
            if self.config.do_resize:
                images = self.resize(images, height, width)
        else:
            images = torch.cat(images, dim=0) if images[0].ndim == 4 else torch.stack(images, dim=0)
            if self.config.do_convert_grayscale and images.ndim == 3:
                images = images.unsqueeze(1)
            if images.shape[1] == self.config.vae_latent_channels:
                return images  # latents pass through untouched
            height, width = self.get_default_height_width(images, height, width)
            if self.config.do_resize:
                images = self.resize(images, height, width)
        return self._normalize_and_binarize(images)

    def _normalize_and_binarize(self, images: torch.Tensor) -> torch.Tensor:
        do_normalize = self.config.do_normalize
        if do_normalize and images.min() < 0:
            warnings.warn(
                "Passing `image` with values in [-1, 1] is deprecated; the expected range is [0, 1]. "
                f"You passed values in [{images.min()}, {images.max()}].",
                FutureWarning,
            )
            do_normalize = False
        if do_normalize:
            images = self.normalize(images)
        if self.config.do_binarize:
            images = (images >= 0.5).to(images.dtype)
        return images

    # ---- out ------------------------------------------------------------------------------------

    def postprocess(self, image: torch.Tensor, output_type: str = "pil", do_denormalize: list[bool] | None = None):
        """NCHW tensor in [-1, 1] -> "pil" | "np" | "pt" (in [0, 1]) | "latent" (unchanged)."""
        if not isinstance(image, torch.Tensor):
            raise ValueError(f"postprocess expects a torch tensor, got {type(image).__name__}")
        if output_type not in OUTPUT_TYPES:
            warnings.warn(f"output_type={output_type!r} is not one of {OUTPUT_TYPES}; returning 'np'.", FutureWarning)
            output_type = "np"
        if output_type == "latent":
            return image
        if do_denormalize is None:
            image = self.denormalize(image) if self.config.do_normalize else image
        else:
            image = torch.stack([self.denormalize(im) if d else im for im, d in zip(image, do_denormalize)])
        if output_type == "pt":
            return image
        image = pt_to_numpy(image)
        return image if output_type == "np" else numpy_to_pil(image)

    # ---- inpainting helpers ---------------------------------------------------------------------------

    @staticmethod
    def get_crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int = 0):
        """Bounding box of the mask's non-zero pixels, padded, then widened to the (width, height) aspect."""
        mask = np.array(mask_image.convert("L"))
        h, w = mask.shape
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        top, bottom = (rows[0], rows[-1] + 1) if len(rows) else (h, 0)
        left, right = (cols[0], cols[-1] + 1) if len(cols) else (w, 0)
        x1, y1 = int(max(left - pad, 0)), int(max(top - pad, 0))
        x2, y2 = int(min(right + pad, w)), int(min(bottom + pad, h))
        if (x2 - x1) / (y2 - y1) > width / height:
            y1, y2 = _widen(y1, y2, (x2 - x1) / (width / height), h)
        else:
            x1, x2 = _widen(x1, x2, (y2 - y1) * (width / height), w)
        return x1, y1, x2, y2

    def apply_overlay(self, mask: PIL.Image.Image, init_image: PIL.Image.Image, image: PIL.Image.Image,
                      crop_coords: tuple[int, int, int, int] | None = None) -> PIL.Image.Image:
        """Paste the generated image back over the original, keeping the unmasked original pixels."""
        width, height = init_image.width, init_image.height
        kept = PIL.Image.new("RGBa", (width, height))
        kept.paste(init_image.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask.convert("L")))
        kept = kept.convert("RGBA")
        if crop_coords is not None:
            x, y, x2, y2 = crop_coords
            base = PIL.Image.new("RGBA", (width, height))
            base.paste(self.resize(image, height=y2 - y, width=x2 - x, resize_mode="crop"), (x, y))
            image = base.convert("RGB")
        image = image.convert("RGBA")
        image.alpha_composite(kept)
        return image.convert("RGB")


def _widen(lo: int, hi: int, desired: float, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to `desired` length around its centre, shifted back inside [0, limit]."""
    diff = int(desired - (hi - lo))
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)
