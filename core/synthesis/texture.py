"""Scanner texture for generated fills: noise with the host's own spectrum and level.

The insertion generator paints a smooth image: inside generated tumours the high-pass residual and the mean
|Laplacian| were 30-70 % below the host's (FLAIR most), and those were the real-vs-generated patch classifier's
telltales. Real scans carry acquisition noise whose spectrum depends on the scanner and the resampling (thick
slices correlate it along one axis). This module measures that texture on the host's healthy tissue around ``R``
and adds noise with the same power spectrum (random-phase noise: Galerne, Gousseau & Morel, "Random phase
textures", IEEE TIP 2011) to a generated crop, scaled so that the sum's high-pass level inside ``R`` matches the
host's. Levels are robust (1.4826 x the median absolute deviation) and the residual is clipped at 3 of them before
its spectrum is taken: the noise is what is wanted, not the sparse anatomical edges that also pass the filter.
Given the target's labels, each tumour class is brought to its own level instead (:data:`TUMOUR_LEVEL_RATIO`, measured
on real training cases: oedema is smoother than the healthy brain, necrosis and enhancing tumour rougher).

Real tumour tissue is also coarser and patchier than noise: the band between 1 and 3 voxels
(:func:`mid_band`) holds blobs, cysts and vessels, and their contrast varies from place to place. So, before the fine
noise, each class is given that band up to its real level (:data:`TUMOUR_MID_LEVEL`) with band-passed white noise
whose local amplitude follows a smooth log-normal field (:data:`HETEROGENEITY`), set so that its tails are as heavy
as real tumour tissue's (:data:`TAIL_FRACTION`): patchy tissue rather than stationary grain. Checked by host-wise
cross-validation on training hosts (``bench/synthesis/insertion_texture_cv.py``).

Arrays are channel-last z-scores ``(X, Y, Z, C)`` as the generator sees them; no Keras import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from core.preprocessing.preprocess import bounding_box
from core.synthesis.filters import gaussian_spatial

HIGH_PASS_SIGMA = 1.0  # voxels: the residual ``z - gaussian(z, sigma)`` is what "texture" means here
EDGE = 3  # voxels of healthy context dropped next to R and the brain's edge (their residual is an edge, not noise)
MIN_VOXELS = 1000  # fewer healthy context voxels than this: no texture (too little to measure a spectrum)
CLIP = 3.0  # robust levels at which the residual is clipped before its spectrum is taken
LEVEL_SAMPLES = 200_000  # values a robust level is taken from (an even stride through larger sets)
MIN_CLASS_VOXELS = 200  # a tumour class smaller than this in R takes the whole region's fill level as its own
MID_BAND_SIGMAS = (1.0, 3.0)  # voxels: the band ``gaussian(z, 1) - gaussian(z, 3)`` is the tissue's coarse texture
HETEROGENEITY = 0.2  # std of the log of the mid-band noise's local amplitude (0: stationary noise); see TAIL_FRACTION
HETEROGENEITY_SIGMA = 2.0  # voxels: smoothness of that log-amplitude field

# Robust high-pass level of real tumour tissue over that of the healthy brain around it, per internal label
# (1 NCR, 2 ED, 3 ET) and modality (T1, T1ce, T2, FLAIR): medians over the 20 real training cases
# (``bench/analysis/tumour_texture.py``, ``bench/results/synthesis/tumour_texture.json``). Oedema is smoother than the
# healthy brain (no cortical folding), necrosis and enhancing rims are rougher; label 0 inside R (healthy fill) is 1.
TUMOUR_LEVEL_RATIO: dict[int, tuple[float, float, float, float]] = {
    1: (0.81, 1.50, 1.18, 1.42),
    2: (0.72, 0.84, 0.82, 0.95),
    3: (0.80, 3.31, 1.01, 1.63),
}

# Share of real tumour voxels whose mid band lies beyond 3 robust levels: 0.5-1.5 % per class and modality (medians
# over the 20 training cases, ``bench/analysis/tumour_texture.py``; Gaussian noise: 0.3 %). HETEROGENEITY 0.2 gives
# 0.9 % (0.8 gave 9 % and salt-and-pepper voxels that the patch classifier liked and a reader would not).
TAIL_FRACTION = 0.009

# Robust level of :func:`mid_band` inside real tumour tissue, in z-scores of the case's healthy brain, per internal
# label and modality: medians over the 20 real training cases (``bench/analysis/tumour_texture.py``). A generated class
# whose fill has less is brought up to it; healthy fill (label 0) is left to the fine noise.
TUMOUR_MID_LEVEL: dict[int, tuple[float, float, float, float]] = {
    1: (0.15, 0.32, 0.32, 0.48),
    2: (0.13, 0.17, 0.21, 0.41),
    3: (0.13, 0.57, 0.21, 0.49),
}


def robust_level(values: np.ndarray) -> np.ndarray:
    """1.4826 x the median absolute deviation along axis 0 (the standard deviation of Gaussian noise)."""
    values = np.asarray(values, np.float32)
    values = values[:: max(len(values) // LEVEL_SAMPLES, 1)]
    return 1.4826 * np.median(np.abs(values - np.median(values, axis=0)), axis=0)


def padded_box(mask: np.ndarray, reach: int) -> tuple[slice, ...]:
    """``mask``'s bounding box grown by a filter's ``reach`` (clipped to the crop): a Gaussian filter of the padded
    box equals the whole crop's on the box."""
    return tuple(slice(max(b.start - reach, 0), min(b.stop + reach, n)) for b, n in zip(bounding_box(mask), mask.shape))


def _high_pass_on(z: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """High-pass residual of ``z`` on ``region``'s box padded by the Gaussian's reach (equal there to the whole
    crop's residual), and that box."""
    box = padded_box(region, int(4 * HIGH_PASS_SIGMA) + 1)
    return high_pass(z[box]), box


def _level_inside(z: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Robust high-pass level per channel of ``z`` inside ``region`` (filtered on the region's box only)."""
    residual, box = _high_pass_on(z, region)
    return robust_level(residual[region[box]])


def high_pass(z: np.ndarray, sigma: float = HIGH_PASS_SIGMA) -> np.ndarray:
    """``z - gaussian(z, sigma)`` per channel of a channel-last ``(X, Y, Z, C)`` array (float32)."""
    z = np.asarray(z, np.float32)
    return z - gaussian_spatial(z, sigma)


def mid_band(z: np.ndarray) -> np.ndarray:
    """``gaussian(z, 1) - gaussian(z, 3)`` per channel of a channel-last ``(X, Y, Z, C)`` array (float32)."""
    z = np.asarray(z, np.float32)
    low, high = MID_BAND_SIGMAS
    return gaussian_spatial(z, low) - gaussian_spatial(z, high)


def patchy_mid_noise(shape: tuple[int, ...], rng: np.random.Generator,
                     heterogeneity: float = HETEROGENEITY) -> np.ndarray:
    """Zero-mean ``(X, Y, Z, C)`` noise in the mid band whose local amplitude is ``exp(heterogeneity * f)``, ``f`` a
    smooth unit-variance Gaussian field shared by the channels (tissue that is patchy in every modality at once)."""
    noise = mid_band(rng.standard_normal(shape, dtype=np.float32))
    if heterogeneity > 0:
        field = ndimage.gaussian_filter(rng.standard_normal(shape[:3], dtype=np.float32), HETEROGENEITY_SIGMA)
        field /= max(float(field.std()), 1e-6)
        noise *= np.exp(heterogeneity * field)[..., None]
    return noise


def add_mid_band(generated: np.ndarray, region: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 strength: float = 1.0) -> np.ndarray:
    """``generated`` with each tumour class of ``region`` brought up to its real mid-band level
    (:data:`TUMOUR_MID_LEVEL` times ``strength``) by :func:`patchy_mid_noise`; other voxels unchanged.

    Args:
        generated: ``(X, Y, Z, C)`` z-scores (``C`` = 4 modalities; other channel counts are returned unchanged).
        region: bool ``(X, Y, Z)`` ``R``.
        labels: ``(X, Y, Z)`` internal labels 0..3.
        rng: noise source.
        strength: scale of the target level (0 adds nothing).
    """
    out = np.asarray(generated, np.float32).copy()
    classes = [(k, region & (labels == k)) for k in TUMOUR_MID_LEVEL]
    classes = [(k, m) for k, m in classes if m.sum() >= MIN_CLASS_VOXELS]
    if strength <= 0 or out.shape[-1] != 4 or not classes:
        return out
    box = padded_box(np.any([m for _, m in classes], axis=0), int(4 * MID_BAND_SIGMAS[1]) + 1)
    own_band = mid_band(out[box])
    noise = patchy_mid_noise(own_band.shape, rng)
    inside = np.any([m[box] for _, m in classes], axis=0)
    noise_level = np.maximum(robust_level(noise[inside]), 1e-6)
    for k, mask in classes:
        inner = mask[box]
        own = robust_level(own_band[inner])
        missing = np.sqrt(np.maximum((strength * np.asarray(TUMOUR_MID_LEVEL[k], np.float32)) ** 2 - own ** 2, 0.0))
        out[box][inner] += noise[inner] * (missing / noise_level)
    return out


@dataclass(frozen=True)
class HostTexture:
    """The host's texture next to ``R``, per channel.

    Attributes:
        amplitude: ``(C, X, Y, Z // 2 + 1)`` magnitude of the real FFT of the host's high-pass residual over the
            healthy context (clipped at ``CLIP`` levels), divided by the square root of its voxel count: white noise
            filtered with it has the clipped residual's mean square per voxel.
        level: ``(C,)`` robust level of that residual (:func:`robust_level`, z-score units).
        shape: spatial shape of the crop it was measured on.
    """

    amplitude: np.ndarray
    level: np.ndarray
    shape: tuple[int, int, int]


def host_texture(context: np.ndarray, healthy: np.ndarray) -> HostTexture | None:
    """Measure the host's texture on a crop.

    Args:
        context: ``(X, Y, Z, C)`` host z-scores of the crop (values inside ``R`` and outside the brain are ignored).
        healthy: bool ``(X, Y, Z)``: the crop's brain voxels outside ``R``.

    Returns:
        The texture, or ``None`` when fewer than ``MIN_VOXELS`` healthy voxels remain away from edges.
    """
    context = np.asarray(context, np.float32)
    keep = ndimage.binary_erosion(np.asarray(healthy, bool), iterations=EDGE)
    count = int(keep.sum())
    if count < MIN_VOXELS:
        return None
    residual = high_pass(context)
    amplitude, level = [], []
    for c in range(context.shape[-1]):
        c_level = float(robust_level(residual[..., c][keep]))
        r = np.where(keep, np.clip(residual[..., c], -CLIP * c_level, CLIP * c_level), 0.0).astype(np.float32)
        level.append(c_level)
        amplitude.append((np.abs(fft.rfftn(r, workers=-1)) / np.sqrt(count)).astype(np.float32))
    return HostTexture(amplitude=np.stack(amplitude), level=np.asarray(level, np.float32),
                       shape=tuple(int(n) for n in context.shape[:3]))  # type: ignore[arg-type]


def matched_noise(texture: HostTexture, rng: np.random.Generator) -> np.ndarray:
    """Random-phase noise ``(X, Y, Z, C)`` with the texture's power spectrum (zero mean)."""
    shape = texture.shape
    out = np.empty((*shape, len(texture.level)), np.float32)
    for c, amplitude in enumerate(texture.amplitude):
        white = fft.rfftn(rng.standard_normal(shape, dtype=np.float32), workers=-1)
        white[0, 0, 0] = 0.0  # no offset: the noise must not shift the fill's mean
        out[..., c] = fft.irfftn(white * amplitude, s=shape, workers=-1)
    return out


def level_ratio(label: int, channels: int) -> np.ndarray:
    """Target level of ``label``'s tissue relative to the healthy brain, per channel (:data:`TUMOUR_LEVEL_RATIO`;
    1 for healthy tissue and for channel counts other than the four modalities)."""
    ratio = TUMOUR_LEVEL_RATIO.get(int(label))
    if ratio is None or len(ratio) != channels:
        return np.ones(channels, np.float32)
    return np.asarray(ratio, np.float32)


def add_texture(generated: np.ndarray, texture: HostTexture, region: np.ndarray, rng: np.random.Generator,
                strength: float = 1.0, labels: np.ndarray | None = None, mid: bool = True) -> np.ndarray:
    """``generated`` plus host-matched noise inside ``region``.

    Per channel, the noise's robust high-pass level inside ``region`` is ``strength`` times the part of the target
    level the fill lacks: ``sqrt(target**2 - level_generated**2)`` (0 where the fill is already as rough). The
    target is the host's healthy level; with ``labels``, each tumour class of ``region`` gets its own target (the
    host's level times :func:`level_ratio`) and is measured and scaled on its own voxels, after its coarse
    texture is added (:func:`add_mid_band`, unless ``mid`` is false). Voxels outside ``region`` are returned
    unchanged.

    Args:
        generated: ``(X, Y, Z, C)`` generated z-scores of the crop the texture was measured on.
        texture: from :func:`host_texture`.
        region: bool ``(X, Y, Z)`` ``R`` in the crop.
        rng: noise source (seed it for reproducible samples).
        strength: scale of the added noise (the sampling temperature; 0 adds nothing).
        labels: optional ``(X, Y, Z)`` internal labels 0..3 of the target in the crop.
        mid: with ``labels``, add the tumour classes' mid-band texture first.
    """
    generated = np.asarray(generated, np.float32)
    region = np.asarray(region, bool)
    if generated.shape[:3] != texture.shape or region.shape != texture.shape:
        raise ValueError(f"crop {generated.shape[:3]} / region {region.shape} differ from the texture's "
                         f"{texture.shape}")
    if labels is not None and np.shape(labels) != texture.shape:
        raise ValueError(f"labels {np.shape(labels)} differ from the texture's crop {texture.shape}")
    if strength <= 0 or not region.any():
        return generated.copy()
    if labels is not None and mid:
        generated = add_mid_band(generated, region, np.asarray(labels), rng, strength)
    channels = len(texture.level)
    classes = [(region, np.ones(channels, np.float32))] if labels is None else [
        (region & (labels == k), level_ratio(k, channels)) for k in np.unique(np.asarray(labels)[region])]
    residual, box = _high_pass_on(generated, region)
    whole = robust_level(residual[region[box]])
    missing = []
    for mask, ratio in classes:
        own = robust_level(residual[mask[box]]) if mask.sum() >= MIN_CLASS_VOXELS else whole
        missing.append(np.sqrt(np.maximum((texture.level * ratio) ** 2 - own ** 2, 0.0)))
    if not any(m.any() for m in missing):
        return generated.copy()
    noise = matched_noise(texture, rng)
    noise_level = _level_inside(noise, region)  # the noise is stationary: one level serves every class
    out = generated.copy()
    for (mask, _), miss in zip(classes, missing):
        out[mask] += noise[mask] * (strength * miss / np.maximum(noise_level, 1e-6))
    return out
