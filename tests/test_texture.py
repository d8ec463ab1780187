"""Host-matched scanner texture added to generated fills (core.synthesis.texture, insert_tumour's samples)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from core.synthesis import texture as tx

SHAPE = (40, 40, 40)


def _lag1(noise: np.ndarray, mask: np.ndarray, axis: int) -> float:
    a, b = noise, np.roll(noise, 1, axis=axis)
    both = mask & np.roll(mask, 1, axis=axis)
    return float(np.corrcoef(a[both], b[both])[0, 1])


def _host(rng: np.random.Generator, sigma: float = 0.3, smooth_axis: int | None = None) -> np.ndarray:
    """A two-channel z-score crop: a smooth ramp plus noise of std ``sigma`` (correlated along one axis if asked)."""
    noise = rng.normal(0, 1, (*SHAPE, 2)).astype(np.float32)
    if smooth_axis is not None:
        widths = [0.0, 0.0, 0.0, 0.0]
        widths[smooth_axis] = 1.5
        noise = ndimage.gaussian_filter(noise, widths)
        noise /= noise.std()
    ramp = np.linspace(-1, 1, SHAPE[0], dtype=np.float32)[:, None, None, None]
    return ramp + sigma * noise


def _split() -> tuple[np.ndarray, np.ndarray]:
    """(healthy, region): a centred cube R and the rest of the crop as healthy context."""
    region = np.zeros(SHAPE, bool)
    region[12:28, 12:28, 12:28] = True
    return ~region, region


def test_level_is_the_hosts_noise_level_not_its_edges():
    """A sharp anatomical edge through the context changes the plain std of the residual, not the robust level."""
    rng = np.random.default_rng(0)
    healthy, region = _split()
    host = _host(rng)
    plain = tx.host_texture(host, healthy)
    host[:, :, 20:] += 4.0  # a tissue boundary: large, sparse residuals
    edged = tx.host_texture(host, healthy)
    assert plain is not None and edged is not None
    expected = tx.robust_level(tx.high_pass(_host(np.random.default_rng(0)))[~region])
    np.testing.assert_allclose(plain.level, expected, rtol=0.1)
    np.testing.assert_allclose(edged.level, plain.level, rtol=0.1)
    assert tx.high_pass(host)[..., 0][healthy].std() > 1.3 * plain.level[0]


def test_smooth_fill_gets_the_hosts_level_and_only_inside_the_region():
    rng = np.random.default_rng(1)
    healthy, region = _split()
    texture = tx.host_texture(_host(rng), healthy)
    smooth = np.zeros((*SHAPE, 2), np.float32)
    out = tx.add_texture(smooth, texture, region, np.random.default_rng(5))
    level = tx.robust_level(tx.high_pass(out)[region])
    np.testing.assert_allclose(level, texture.level, rtol=0.1)
    np.testing.assert_array_equal(out[~region], smooth[~region])
    assert abs(float(out[region].mean())) < 0.05  # zero-mean noise: the fill's intensity is kept


def test_noise_has_the_hosts_spectrum():
    """Noise correlated along z in the host is correlated along z in the fill (white noise would not be)."""
    rng = np.random.default_rng(2)
    healthy, region = _split()
    host = _host(rng, smooth_axis=2)
    texture = tx.host_texture(host, healthy)
    out = tx.add_texture(np.zeros((*SHAPE, 2), np.float32), texture, region, np.random.default_rng(0))
    inner = ndimage.binary_erosion(region, iterations=2)
    added = out[..., 0]
    host_hp = tx.high_pass(host)[..., 0]
    host_mask = ndimage.binary_erosion(healthy, iterations=4)
    assert _lag1(added, inner, 2) > _lag1(added, inner, 0) + 0.3
    assert _lag1(added, inner, 2) == pytest.approx(_lag1(host_hp, host_mask, 2), abs=0.15)


def test_rough_fill_gets_nothing_and_strength_zero_is_identity():
    rng = np.random.default_rng(3)
    healthy, region = _split()
    texture = tx.host_texture(_host(rng, sigma=0.2), healthy)
    rough = rng.normal(0, 1.0, (*SHAPE, 2)).astype(np.float32)  # rougher than the host already
    np.testing.assert_array_equal(tx.add_texture(rough, texture, region, np.random.default_rng(0)), rough)
    smooth = np.zeros((*SHAPE, 2), np.float32)
    np.testing.assert_array_equal(tx.add_texture(smooth, texture, region, np.random.default_rng(0), 0.0), smooth)
    half = tx.add_texture(smooth, texture, region, np.random.default_rng(0), 0.5)
    full = tx.add_texture(smooth, texture, region, np.random.default_rng(0), 1.0)
    np.testing.assert_allclose(half, 0.5 * full, atol=1e-5)


def test_too_little_context_gives_no_texture_and_wrong_crop_is_refused():
    rng = np.random.default_rng(4)
    healthy, region = _split()
    tiny = np.zeros(SHAPE, bool)
    tiny[:3] = True  # eroded away entirely
    assert tx.host_texture(_host(rng), tiny) is None
    texture = tx.host_texture(_host(rng), healthy)
    with pytest.raises(ValueError, match="differ"):
        tx.add_texture(np.zeros((32, 40, 40, 2), np.float32), texture, region[:32], rng)


def test_each_tumour_class_gets_its_own_level():
    """With the target's labels, oedema is filled smoother and enhancing tumour rougher than healthy tissue, per
    modality, as measured on the real training cases (TUMOUR_LEVEL_RATIO); healthy fill keeps the host's level."""
    rng = np.random.default_rng(3)
    healthy, region = _split()
    host = np.concatenate([_host(rng), _host(rng)], axis=-1)  # four channels: T1, T1ce, T2, FLAIR
    texture = tx.host_texture(host, healthy)
    labels = np.zeros(SHAPE, np.uint8)
    labels[12:28, 12:28, 12:19] = 2  # ED
    labels[12:28, 12:28, 21:28] = 3  # ET; z 19-20 of R is healthy fill (label 0)
    out = tx.add_texture(np.zeros((*SHAPE, 4), np.float32), texture, region, np.random.default_rng(4), labels=labels)
    residual = tx.high_pass(out)
    for label in (2, 3):
        inner = ndimage.binary_erosion(labels == label, iterations=2)
        np.testing.assert_allclose(tx.robust_level(residual[inner]), texture.level * tx.level_ratio(label, 4),
                                   rtol=0.2)
    assert np.all(tx.level_ratio(0, 4) == 1) and np.all(tx.level_ratio(3, 2) == 1)
    np.testing.assert_array_equal(out[~region], 0)
    no_labels = tx.add_texture(np.zeros((*SHAPE, 4), np.float32), texture, region, np.random.default_rng(4))
    assert not np.allclose(no_labels, out)
    with pytest.raises(ValueError, match="labels"):
        tx.add_texture(out, texture, region, rng, labels=labels[:-1])


def test_tumour_classes_get_their_real_mid_band_level_only_on_their_voxels():
    """add_mid_band brings each tumour class's 1-3 voxel band to TUMOUR_MID_LEVEL; healthy fill, voxels outside R,
    already-coarse fills and non-four-channel crops are left as they are."""
    _, region = _split()
    labels = np.zeros(SHAPE, np.uint8)
    labels[12:28, 12:28, 12:19] = 2  # ED
    labels[12:28, 12:28, 21:28] = 3  # ET; z 19-20 of R is healthy fill (label 0)
    out = tx.add_mid_band(np.zeros((*SHAPE, 4), np.float32), region, labels, np.random.default_rng(6))
    for label in (2, 3):  # the added noise is band-limited: its level is its mid-band level away from the edges
        np.testing.assert_allclose(tx.robust_level(out[labels == label]), tx.TUMOUR_MID_LEVEL[label], rtol=0.15)
    np.testing.assert_array_equal(out[~region], 0)
    np.testing.assert_array_equal(out[region & (labels == 0)], 0)
    coarse = 10.0 * tx.mid_band(np.random.default_rng(7).standard_normal((*SHAPE, 4)).astype(np.float32))
    np.testing.assert_array_equal(tx.add_mid_band(coarse, region, labels, np.random.default_rng(6)), coarse)
    two = np.zeros((*SHAPE, 2), np.float32)
    np.testing.assert_array_equal(tx.add_mid_band(two, region, labels, np.random.default_rng(6)), two)
    half = tx.add_mid_band(np.zeros((*SHAPE, 4), np.float32), region, labels, np.random.default_rng(6), 0.5)
    np.testing.assert_allclose(np.abs(half).sum(), 0.5 * np.abs(out).sum(), rtol=1e-4)


def test_mid_band_noise_is_patchy_with_real_tumour_tails():
    """The log-normal amplitude field makes the noise's contrast vary from place to place, with as many voxels
    beyond 3 robust levels as real tumour tissue has (TAIL_FRACTION), which stationary noise lacks."""
    def tail(x: np.ndarray) -> float:
        x = x.ravel() - np.median(x)
        return float(np.mean(np.abs(x) > 3 * tx.robust_level(x[:, None])[0]))

    shape = (64, 64, 64, 1)
    stationary = tx.patchy_mid_noise(shape, np.random.default_rng(8), heterogeneity=0.0)
    patchy = tx.patchy_mid_noise(shape, np.random.default_rng(8))
    assert tail(stationary) < 0.005
    assert 0.6 * tx.TAIL_FRACTION < tail(patchy) < 1.5 * tx.TAIL_FRACTION
    energy = ndimage.uniform_filter(patchy[..., 0] ** 2, 8)[8:-8, 8:-8, 8:-8]
    flat = ndimage.uniform_filter(stationary[..., 0] ** 2, 8)[8:-8, 8:-8, 8:-8]
    assert energy.std() / energy.mean() > 1.3 * flat.std() / flat.mean()


@pytest.mark.parametrize("sigma", [0.0, 1.0, 3.0])
def test_gaussian_spatial_equals_scipy_per_channel_in_either_layout(sigma):
    from scipy import ndimage

    from core.synthesis.filters import gaussian_spatial

    volume = np.random.default_rng(0).standard_normal((9, 11, 7, 4)).astype(np.float32)
    expected = ndimage.gaussian_filter(volume, sigma=(sigma, sigma, sigma, 0))
    np.testing.assert_array_equal(gaussian_spatial(volume, sigma), expected)  # bit for bit, threads or not
    first = np.ascontiguousarray(np.moveaxis(volume, -1, 0))
    np.testing.assert_array_equal(gaussian_spatial(first, sigma, channel_axis=0), np.moveaxis(expected, -1, 0))
    with pytest.raises(ValueError, match="4-D"):
        gaussian_spatial(volume[..., 0], sigma)
