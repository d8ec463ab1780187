"""The region an insertion regenerates, the crop around it, normalisation and the blend.

Insertion of a target label map ``T`` into a host case whose own tumour is ``H``:

* ``R = dilate(T | H, margin) & (brain | T)`` -- every voxel the generator may change (:func:`insertion_region`);
  the host tumour is inside ``R``, so where ``T`` is empty it is replaced by healthy tissue;
* the generator works on a 1 mm crop around ``R`` plus context (:func:`region_box`), on z-scores of the host
  taken over its healthy brain outside ``R`` (:func:`healthy_stats`);
* the result is the host outside ``R`` (bit-identical: :func:`composite` copies only ``R``'s voxels) and, inside
  ``R``, the generated voxels blended into the host over a ramp of ``ramp`` voxels at ``R``'s border
  (:func:`blend_alpha`), so no seam shows.

All arrays are numpy, spatial axes last (``(C, X, Y, Z)`` images, ``(X, Y, Z)`` masks); no Keras import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from core.io.labels import ED, ET, NCR
from core.preprocessing.preprocess import CropBox, bounding_box

MARGIN = 4  # voxels (1 mm) that R extends beyond target | host tumour
RAMP = 3  # voxels of the blend ramp at R's border (inside R)
CONTEXT = 16  # voxels of host context around R in the generator's crop
MULTIPLE = 8  # crop sides are multiples of the generator's down-sampling factor
COND_CHANNELS = 5  # NCR, ED, ET one-hot; R; brain
CONTEXT_CHANNELS = 4  # host z-scores, 0 inside R and outside the brain


def _grown(box: tuple[slice, ...], pad: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``pad`` voxels on every side, clipped to the grid."""
    return tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, shape))


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Dilation of a bool mask by a ball of ``radius`` voxels (Euclidean), computed on its bounding box only."""
    mask = np.asarray(mask, bool)
    box = bounding_box(mask)
    if box is None or radius <= 0:
        return mask.copy()
    grown = _grown(box, int(np.ceil(radius)) + 1, mask.shape)
    out = np.zeros_like(mask)
    out[grown] = ndimage.distance_transform_edt(~mask[grown]) <= radius
    return out


def insertion_region(target: np.ndarray, host_tumour: np.ndarray, brain: np.ndarray,
                     margin: float = MARGIN) -> np.ndarray:
    """``R = dilate(target | host_tumour, margin) & (brain | target)``: the voxels an insertion regenerates.

    Args:
        target: ``(X, Y, Z)`` label map (non-zero = tumour) to insert.
        host_tumour: ``(X, Y, Z)`` the host's own tumour (non-zero), replaced by healthy tissue where
            ``target`` is empty.
        brain: bool ``(X, Y, Z)`` brain mask of the host.
        margin: dilation radius in voxels.

    Returns:
        bool ``(X, Y, Z)``; empty when both maps are empty.
    """
    target = np.asarray(target) > 0
    tumour = target | (np.asarray(host_tumour) > 0)
    return dilate(tumour, margin) & (np.asarray(brain, bool) | target)


def blend_alpha(region: np.ndarray, brain: np.ndarray, ramp: float = RAMP) -> np.ndarray:
    """Weight of the generated image per voxel: 0 outside ``R``, rising to 1 over ``ramp`` voxels inside it.

    The distance is measured to the host's brain voxels outside ``R`` (the image the generated voxels must join),
    so where ``R`` reaches the edge of the brain the weight stays 1.
    """
    region = np.asarray(region, bool)
    alpha = np.zeros(region.shape, np.float32)
    box = bounding_box(region)
    if box is None:
        return alpha
    # only distances up to the ramp matter, so the transform runs on R's box grown by the ramp: a host voxel
    # within `ramp` of a voxel of R lies inside it, and farther ones give weight 1 either way
    grown = _grown(box, int(np.ceil(ramp)) + 1, region.shape)
    inside = region[grown]
    keep = np.asarray(brain, bool)[grown] & ~inside
    if not keep.any():
        alpha[grown] = inside
        return alpha
    distance = ndimage.distance_transform_edt(~keep)
    local = np.clip(distance / max(float(ramp), 1e-6), 0.0, 1.0).astype(np.float32)
    local[~inside] = 0.0
    alpha[grown] = local
    return alpha


def region_box(region: np.ndarray, context: int = CONTEXT, multiple: int = MULTIPLE,
               min_size: int = 32) -> CropBox:
    """The crop around ``R``: its bounding box plus ``context`` voxels, each side a multiple of ``multiple``.

    The box stays centred on ``R`` and is shifted to stay inside the grid where the axis is long enough; an axis
    shorter than the box is padded (the padding is outside the brain: zeros).
    """
    region = np.asarray(region, bool)
    box = bounding_box(region) or tuple(slice(0, n) for n in region.shape)
    start, stop, before, after = [], [], [], []
    for sl, n in zip(box, region.shape):
        size = max(sl.stop - sl.start + 2 * context, min_size)
        size = int(np.ceil(size / multiple) * multiple)
        lo = (sl.start + sl.stop - size) // 2
        if size <= n:
            lo = min(max(lo, 0), n - size)
            start.append(lo), stop.append(lo + size), before.append(0), after.append(0)
        else:
            extra = size - n
            start.append(0), stop.append(n), before.append(extra // 2), after.append(extra - extra // 2)
    return CropBox(region.shape, tuple(start), tuple(stop), tuple(before), tuple(after))


def healthy_stats(image: np.ndarray, brain: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-modality mean and std of the host over its brain outside ``R`` (the tissue the generator must match).

    Falls back to the whole brain when ``R`` covers it; a std under 1e-6 is taken as 1.
    """
    image = np.asarray(image)
    keep = np.asarray(brain, bool) & ~np.asarray(region, bool)
    if keep.sum() < 100:
        keep = np.asarray(brain, bool)
    if not keep.any():
        raise ValueError("the host has no brain voxels (every voxel is background)")
    values = image[:, keep]  # float64 accumulation without a float64 copy
    mean, std = values.mean(axis=1, dtype=np.float64), values.std(axis=1, dtype=np.float64)
    return mean.astype(np.float32), np.where(std < 1e-6, 1.0, std).astype(np.float32)


def normalise(image: np.ndarray, brain: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(image - mean) / std`` per modality inside ``brain``, 0 outside (float32)."""
    z = (np.asarray(image, np.float32) - np.asarray(mean, np.float32)[:, None, None, None])
    z /= np.asarray(std, np.float32)[:, None, None, None]
    z *= np.asarray(brain, bool)
    return z


def denormalise(z: np.ndarray, mean: np.ndarray, std: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalise`, at least ``floor`` per modality (the host's lowest brain intensity)."""
    out = np.asarray(z, np.float32) * np.asarray(std, np.float32)[:, None, None, None]
    out += np.asarray(mean, np.float32)[:, None, None, None]
    return np.maximum(out, np.asarray(floor, np.float32)[:, None, None, None])


def brain_floor(image: np.ndarray, brain: np.ndarray, percentile: float = 0.5) -> np.ndarray:
    """Per-modality low percentile of the host's brain intensities (generated voxels never go below it)."""
    brain = np.asarray(brain, bool)
    if not brain.any():
        return np.zeros(np.asarray(image).shape[0], np.float32)
    return np.percentile(np.asarray(image)[:, brain], percentile, axis=1).astype(np.float32)


def condition(target: np.ndarray, region: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Generator condition ``(X, Y, Z, 5)`` float32, channel-last: one-hot NCR, ED, ET of ``target``; R; brain."""
    target = np.asarray(target)
    cond = np.empty((*target.shape, COND_CHANNELS), np.float32)
    for channel, label in enumerate((NCR, ED, ET)):
        np.equal(target, label, out=cond[..., channel], casting="unsafe")
    cond[..., 3] = np.asarray(region, bool)
    cond[..., 4] = np.asarray(brain, bool) | (target > 0)
    return cond


def masked_context(zscores: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Generator context ``(X, Y, Z, 4)``: the host's z-scores with ``R`` blanked (channel-last, float32)."""
    context = np.moveaxis(np.asarray(zscores, np.float32), 0, -1).copy()
    context[np.asarray(region, bool)] = 0.0
    return context


def composite(host: np.ndarray, generated: np.ndarray, region: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The host with ``R`` replaced by ``alpha * generated + (1 - alpha) * host``; other voxels copied bit for bit.

    Args:
        host: ``(C, X, Y, Z)`` host image.
        generated: ``(C, X, Y, Z)`` generated image on the same grid (only its ``R`` voxels are read).
        region: bool ``(X, Y, Z)``.
        alpha: float ``(X, Y, Z)`` blend weight (:func:`blend_alpha`).
    """
    host = np.asarray(host)
    out = host.copy()
    region = np.asarray(region, bool)
    a = np.asarray(alpha, np.float32)[region]
    for c in range(host.shape[0]):
        out[c][region] = (a * np.asarray(generated[c], np.float32)[region]
                          + (1.0 - a) * host[c][region].astype(np.float32)).astype(host.dtype)
    return out


def region_ssim_psnr(truth: np.ndarray, result: np.ndarray, region: np.ndarray, brain: np.ndarray
                     ) -> dict[str, list[float]]:
    """SSIM and PSNR inside ``R`` per modality, as the BraTS inpainting challenge scores fills.

    Both images are scaled by the truth's 0.5 / 99.5 brain percentiles to [0, 1] per modality; SSIM is the mean
    of the local SSIM map (7-voxel windows) over ``R``'s voxels, PSNR uses the MSE over ``R`` (peak 1).
    """
    from skimage.metrics import structural_similarity

    region = np.asarray(region, bool)
    box = bounding_box(region)
    if box is None:
        raise ValueError("empty region: nothing to score")
    grown = tuple(slice(max(s.start - 4, 0), min(s.stop + 4, n)) for s, n in zip(box, region.shape))
    ssim, psnr = [], []
    for c in range(truth.shape[0]):
        lo, hi = np.percentile(truth[c][np.asarray(brain, bool)], (0.5, 99.5))
        scale = max(float(hi - lo), 1e-6)
        a = np.clip((truth[c][grown] - lo) / scale, 0, 1)
        b = np.clip((result[c][grown] - lo) / scale, 0, 1)
        _, smap = structural_similarity(a, b, data_range=1.0, full=True, win_size=7)
        inside = region[grown]
        ssim.append(float(smap[inside].mean()))
        mse = float(np.mean((a[inside] - b[inside]) ** 2))
        psnr.append(float(10 * np.log10(1.0 / max(mse, 1e-12))))
    return {"ssim": ssim, "psnr": psnr}


def pairwise_ssim(images: Sequence[np.ndarray], region: np.ndarray, brain: np.ndarray) -> list[float]:
    """Mean SSIM inside ``R`` (over modalities) of every pair of generated images (diversity: lower = more)."""
    out = []
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            out.append(float(np.mean(region_ssim_psnr(images[i], images[j], region, brain)["ssim"])))
    return out
