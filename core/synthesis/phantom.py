"""Synthetic glioma MRI cases ("phantoms") on the BraTS grid, with SynthSeg-style domain randomisation.

One phantom = a randomly deformed MNI152 brain (``core.synthesis.anatomy``) carrying one or two gliomas with
nested sub-regions (necrotic/non-enhancing core, enhancing rim, white-matter-following edema) and
their mass effect, imaged as T1, T1ce, T2 and FLAIR with radiological contrasts, partial volume
and texture, then randomised (tissue intensities, gamma, bias field, noise, thick slices,
intensity scale). Everything is drawn from ``np.random.default_rng(seed)``: same seed, same case.

Pipeline of :func:`generate_phantom` (all heavy work stays inside the brain's bounding box):

1. plan: random affine + coarse elastic grid, lesion centres/volumes/shapes.
2. warp: one backward map (mass effect -> affine + elastic) evaluated on a 2 mm grid, tissue maps
   sampled with ``map_coordinates(order=1)`` and upsampled x2 by separable linear interpolation.
3. tumour: quantile-thresholded implicit fields give exact core / whole-tumour volumes.
4. appearance: partial-volume mixing of per-tissue intensities (WM, cortical and deep GM, CSF,
   enhancing vessels, tumour classes) + multi-scale texture.
   Tissue means are randomised around the radiological ordering (jitter + gamma per modality).
5. acquisition: bias field, Gaussian noise, thick-slice simulation or slight blur, scanner scale
   (raw integers or rescaled floats), background exactly 0.

CLI: ``python -m core.phantom`` (:mod:`core.phantom`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from threadpoolctl import threadpool_limits

from core.io.case import MODALITIES, Case
from core.io.labels import ED, ET, NCR
from core.preprocessing.preprocess import bounding_box
from core.synthesis.anatomy import (
    BRATS_AFFINE,
    BRATS_SHAPE,
    Anatomy,
    brats_header,
    brats_to_mni_world,
    load_anatomy,
    voxel_to_mni,
)

Progress = Callable[[float, str], None]
Box = tuple[slice, slice, slice]
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of the phantom generator (defaults: the training distribution).

    Attributes:
        strength: domain-randomisation strength (0 = canonical contrast, clean acquisition; 1 = default;
            up to ~2 for harsher randomisation). Scales intensity jitter, gamma, bias, noise and blur.
        wt_volume_ml: range of the whole-tumour volume (mL), drawn on a log scale skewed to larger tumours
            (median ~45 mL for the default 5-150 mL).
        tc_fraction: range of the tumour core (NCR + ET) as a fraction of the whole tumour.
        p_two_lesions: probability of a second (multifocal) lesion.
        p_no_enhancement: probability of a lesion without enhancing rim (LGG-like, core = NCR only).
        p_partial_rim: probability that only part of the rim enhances.
        rim_mm: range of the enhancing rim thickness (mm).
        rotation_deg: maximum rotation about each axis of the random affine.
        scale: maximum relative scale change per axis of the random affine.
        translation_mm: maximum translation per axis.
        elastic_mm: standard deviation of the smooth elastic displacement (mm).
        mass_effect: range of the mass-effect amplitude (0..1, radial push about the lesion centre).
        ventricle_expansion: maximum amplitude of a random enlargement of the ventricles.
        p_thick_slices: probability per modality of a thick-slice (2D acquisition) simulation.
        slice_mm: range of the simulated slice thickness (mm).
        p_integer: probability that the case is stored as raw scanner integers (else rescaled floats).
        wm_level: range of the white-matter intensity of the output scale (log-uniform).
    """

    strength: float = 1.0
    wt_volume_ml: tuple[float, float] = (5.0, 150.0)
    tc_fraction: tuple[float, float] = (0.12, 0.6)
    p_two_lesions: float = 0.15
    p_no_enhancement: float = 0.2
    p_partial_rim: float = 0.25
    rim_mm: tuple[float, float] = (2.0, 7.0)
    rotation_deg: float = 6.0
    scale: float = 0.08
    translation_mm: float = 6.0
    elastic_mm: float = 2.5
    mass_effect: tuple[float, float] = (0.15, 0.6)
    ventricle_expansion: float = 0.35
    p_thick_slices: float = 0.5
    slice_mm: tuple[float, float] = (2.5, 6.0)
    p_integer: float = 0.5
    wm_level: tuple[float, float] = (100.0, 3000.0)

    def __post_init__(self) -> None:
        ranges = {name: getattr(self, name) for name in ("wt_volume_ml", "tc_fraction", "rim_mm", "mass_effect",
                                                         "slice_mm", "wm_level")}
        for name, (low, high) in ranges.items():
            if not 0 <= low <= high:
                raise ValueError(f"PhantomConfig.{name}={(low, high)}: need 0 <= low <= high")
        for name in ("p_two_lesions", "p_no_enhancement", "p_partial_rim", "p_thick_slices", "p_integer"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PhantomConfig.{name}={getattr(self, name)} is a probability: use 0..1")
        if self.strength < 0:
            raise ValueError(f"PhantomConfig.strength={self.strength} must be >= 0")
        if self.wt_volume_ml[0] <= 0 or self.tc_fraction[1] > 1:
            raise ValueError("PhantomConfig: wt_volume_ml must be > 0 and tc_fraction <= 1")


# --------------------------------------------------------------------------- smooth fields


def _gauss_matrix(n_out: int, n_in: int, cell: float) -> np.ndarray:
    """``(n_out, n_in)`` Gaussian interpolation from coarse knots (spacing ``cell``) with unit output variance."""
    knots = (np.arange(n_in) - 1.0) * cell
    w = np.exp(-0.5 * ((np.arange(n_out)[:, None] - knots[None, :]) / (0.6 * cell)) ** 2)
    return (w / np.sqrt((w**2).sum(axis=1, keepdims=True))).astype(np.float32)


def _separable(a: np.ndarray, mx: np.ndarray, my: np.ndarray, mz: np.ndarray) -> np.ndarray:
    """Apply one matrix per axis: ``out[i,j,k] = sum mx[i,a] my[j,b] mz[k,c] a[a,b,c]`` (three GEMMs)."""
    kx, ky, kz = a.shape
    a = (mx @ a.reshape(kx, ky * kz)).reshape(-1, ky, kz)  # (X, ky, kz)
    nx = a.shape[0]
    a = (my @ a.transpose(1, 0, 2).reshape(ky, nx * kz)).reshape(-1, nx, kz)  # (Y, X, kz)
    a = np.ascontiguousarray(a.transpose(1, 0, 2)).reshape(-1, kz) @ mz.T  # (X * Y, Z)
    return a.reshape(nx, my.shape[0], mz.shape[0])


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: float) -> np.ndarray:
    """Smooth Gaussian random field of unit variance and correlation length ~``cell`` voxels (float32)."""
    cell = max(float(cell), 1.0)
    knots = [int(math.ceil((n - 1) / cell)) + 3 for n in shape]
    coarse = rng.standard_normal(knots, dtype=np.float32)
    mats = [_gauss_matrix(n, k, cell) for n, k in zip(shape, knots)]
    return _separable(coarse, *mats)


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Linear x2 upsampling with aligned corners, ``(n,) -> (2n - 1,)`` per axis (float32, C order)."""
    for axis in range(3):
        shape = list(a.shape)
        shape[axis] = 2 * shape[axis] - 1
        out = np.empty(shape, np.float32)

        def along(sl: slice, _axis: int = axis) -> tuple[slice, ...]:
            return tuple(sl if d == _axis else slice(None) for d in range(3))

        out[along(slice(0, None, 2))] = a
        mid = out[along(slice(1, None, 2))]
        np.add(a[along(slice(None, -1))], a[along(slice(1, None))], out=mid)
        mid *= np.float32(0.5)
        a = out
    return a


def _top_n(values: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """Mask of the ``n`` candidate voxels with the largest ``values`` (all candidates if fewer)."""
    v = values[candidates]
    if n <= 0:
        return np.zeros_like(candidates)
    if n >= v.size:
        return candidates.copy()
    threshold = np.partition(v, v.size - n)[v.size - n]
    return candidates & (values >= threshold)


# --------------------------------------------------------------------------- planning


@dataclass
class _Lesion:
    """One glioma, in output voxel coordinates."""

    centre: np.ndarray
    wt_ml: float
    tc_ml: float
    axes: np.ndarray  # relative semi-axes (product 1)
    rotation: np.ndarray  # (3, 3)
    enhancing: bool
    partial_rim: bool
    rim_mm: float
    mass_amp: float

    @property
    def wt_radius(self) -> float:
        return (3.0 * self.wt_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)

    @property
    def tc_radius(self) -> float:
        return (3.0 * self.tc_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


@dataclass
class _Geometry:
    """Backward map output voxel -> anatomy voxel: ``centre + A (x' - centre) + shift + elastic(x)``."""

    matrix: np.ndarray
    shift: np.ndarray
    centre: np.ndarray
    elastic_coarse: np.ndarray  # (3, kx, ky, kz) displacement knots, mm
    elastic_cell: float
    lesions: list[_Lesion] = field(default_factory=list)
    expansions: list[tuple[np.ndarray, float, float]] = field(default_factory=list)  # (centre, sigma, amplitude)

    def midline_distance(self, coords: Sequence[np.ndarray]) -> np.ndarray:
        """Signed distance (mm, + = template's left-right axis) of output voxels to the template midline.

        ``coords`` are broadcastable per-axis output coordinates; the elastic part is ignored.
        """
        row = self.matrix[0] / np.linalg.norm(self.matrix[0])
        d = np.float32(self.shift[0] / np.linalg.norm(self.matrix[0]))
        for r, x, c in zip(row, coords, self.centre):
            d = d + np.float32(r) * (x - np.float32(c))
        return d

    def inverse_affine(self, p: np.ndarray) -> np.ndarray:
        """Output position of anatomy voxel ``p`` (affine part only)."""
        return self.centre + np.linalg.solve(self.matrix, p - self.centre - self.shift)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Random rotation matrix from three angles in ``[-max_deg, max_deg]``."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _random_orientation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3D rotation (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


@dataclass(frozen=True)
class _TemplateStats:
    """Landmarks of the template brain on the BraTS grid."""

    centroid: np.ndarray
    box: Box
    ventricles: np.ndarray  # centroid of the lateral ventricles
    depth: np.ndarray  # float64 distance (mm) to the brain surface on the 2 mm grid (voxel i -> 2 i)
    surface: np.ndarray  # (n, 3) voxels on the brain surface (2 mm sampling)


@functools.lru_cache(maxsize=1)
def _template_stats() -> _TemplateStats:
    """Brain centroid, bounding box, ventricle centre and depth map of the template (computed once)."""
    anat = load_anatomy()
    centroid = np.argwhere(anat.brain).mean(axis=0)
    box = bounding_box(anat.brain)
    assert box is not None
    depth = ndi.distance_transform_edt(anat.brain[::2, ::2, ::2]) * 2.0
    deep_csf = np.argwhere((anat.csf[::2, ::2, ::2] > 0.6) & (depth > 25.0)) * 2.0
    surface = np.argwhere((depth > 0) & (depth <= 2.0)) * 2.0
    return _TemplateStats(centroid=centroid, box=box, ventricles=deep_csf.mean(axis=0), depth=depth,
                          surface=surface)


@functools.lru_cache(maxsize=1)
def _centre_candidates() -> tuple[np.ndarray, np.ndarray]:
    """Template voxels where a glioma may be centred (white matter, >= 8 mm inside) and their weights.

    Supratentorial white matter is preferred: cerebellum and brainstem get 5 % weight, as in adults.
    """
    anat = load_anatomy()
    ok = (_template_stats().depth >= 8.0) & (anat.wm[::2, ::2, ::2] > 0.5)
    voxels = np.argwhere(ok) * 2.0
    x, y, z = voxel_to_mni(voxels).T
    infratentorial = (y < -40.0) & (z < -20.0)
    brainstem = (np.abs(x) < 12.0) & (z < -10.0)
    weights = np.where(infratentorial | brainstem, 0.05, 1.0)
    return voxels, weights / weights.sum()


def _plan_lesions(rng: np.random.Generator, cfg: PhantomConfig, geom: _Geometry) -> list[_Lesion]:
    """Draw one or two lesions (volumes, shapes, sub-region style) with centres in output space."""
    candidates, weights = _centre_candidates()
    lo, hi = np.log(cfg.wt_volume_ml)
    total_ml = float(np.exp(lo + (hi - lo) * rng.random() ** 0.6))  # log-scale, skewed to larger (BraTS-like)
    two = rng.random() < cfg.p_two_lesions and total_ml >= 8.0  # the smaller lesion keeps >= ~1 mL
    shares = [1.0] if not two else [rng.uniform(0.55, 0.85)]
    if two:
        shares.append(1.0 - shares[0])
    lesions: list[_Lesion] = []
    for share in shares:
        wt_ml = total_ml * share
        centre = _pick_centre(rng, candidates, weights, geom, lesions, wt_ml)
        axes = np.exp(rng.uniform(-0.3, 0.3, 3))
        enhancing = rng.random() >= cfg.p_no_enhancement
        lesions.append(
            _Lesion(
                centre=centre,
                wt_ml=wt_ml,
                tc_ml=wt_ml * rng.uniform(*cfg.tc_fraction),
                axes=axes / np.prod(axes) ** (1.0 / 3.0),
                rotation=_random_orientation(rng),
                enhancing=enhancing,
                partial_rim=enhancing and rng.random() < cfg.p_partial_rim,
                rim_mm=rng.uniform(*cfg.rim_mm),
                mass_amp=rng.uniform(*cfg.mass_effect),
            )
        )
    return lesions


def _pick_centre(
    rng: np.random.Generator,
    candidates: np.ndarray,
    weights: np.ndarray,
    geom: _Geometry,
    others: list[_Lesion],
    wt_ml: float,
) -> np.ndarray:
    """A candidate centre mapped to output space, away from already placed lesions."""
    radius = (3.0 * wt_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    centre = geom.inverse_affine(candidates[rng.choice(len(candidates), p=weights)])
    for _ in range(50):
        far = all(np.linalg.norm(centre - o.centre) > 1.2 * (radius + o.wt_radius) + 5 for o in others)
        if far:
            break
        centre = geom.inverse_affine(candidates[rng.choice(len(candidates), p=weights)])
    return centre


def _mapped_extent(geom: _Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Output-space bounding box (low, high corners) of the template brain surface under the affine part."""
    surface = _template_stats().surface
    mapped = geom.centre + np.linalg.solve(geom.matrix, (surface - geom.centre - geom.shift).T).T
    return mapped.min(axis=0), mapped.max(axis=0)


def _keep_in_grid(geom: _Geometry) -> None:
    """Shift the random affine so that the deformed brain stays inside the grid, in place.

    Real BraTS brains never touch the grid's faces (their top is ~10 slices below it); a brain too
    tall for the grid keeps its top inside and loses the lower brainstem, as skull-stripping does.
    """
    low, high = _mapped_extent(geom)
    elastic = 2.5 * float(geom.elastic_coarse.std())
    low_margin = np.array([4.0, 4.0, 2.0]) + elastic
    limit = np.array(BRATS_SHAPE, dtype=np.float64) - 1.0 - (np.array([4.0, 4.0, 6.0]) + elastic)
    move = np.maximum(low_margin - low, 0.0) + np.minimum(limit - high, 0.0)  # output-space correction
    too_big = (high - low) > (limit - low_margin)
    move = np.where(too_big, (low_margin + limit) / 2 - (low + high) / 2, move)  # centre what cannot fit ...
    if too_big[2]:
        move[2] = limit[2] - high[2]  # ... except along z: keep the top, cut the lower brainstem
    geom.shift = geom.shift - geom.matrix @ move


def _plan_geometry(rng: np.random.Generator, cfg: PhantomConfig) -> _Geometry:
    """Random affine (rotation, scale, translation) and coarse elastic displacement knots."""
    stats = _template_stats()
    scales = 1.0 + rng.uniform(-cfg.scale, cfg.scale, 3)
    matrix = _rotation(rng, cfg.rotation_deg) @ np.diag(1.0 / scales)  # output -> anatomy: inverse scale
    shift = rng.uniform(-cfg.translation_mm, cfg.translation_mm, 3)
    cell = float(rng.uniform(20.0, 32.0))
    knots = [int(math.ceil((n / 2 - 1) / (cell / 2))) + 3 for n in BRATS_SHAPE]
    elastic = rng.standard_normal([3, *knots]).astype(np.float32) * np.float32(cfg.elastic_mm)
    geom = _Geometry(matrix=matrix, shift=shift, centre=stats.centroid, elastic_coarse=elastic, elastic_cell=cell)
    _keep_in_grid(geom)
    # Enlarged ventricles (atrophy / mild hydrocephalus) as an expansion about their centre.
    geom.expansions.append((geom.inverse_affine(stats.ventricles), float(rng.uniform(18.0, 28.0)),
                            float(rng.uniform(0.0, cfg.ventricle_expansion))))
    return geom


# --------------------------------------------------------------------------- warping


@dataclass
class _Tissue:
    """Warped tissue probabilities inside the output box (1 mm)."""

    origin: np.ndarray  # output voxel of box index (0, 0, 0)
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool
    vessels: np.ndarray  # 0..1 vessel / choroid plexus fraction (inside CSF spaces)
    deep: np.ndarray  # part of ``gm`` that is deep grey matter (basal ganglia, thalami)
    texture: np.ndarray  # multi-scale tissue texture, ~unit variance

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.gm.shape)  # type: ignore[return-value]


def _work_grid(geom: _Geometry) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin and size of a 2 mm output grid that surely covers the deformed brain.

    The template's brain surface is mapped through the inverse affine, then widened by the largest
    elastic displacement (the mass effect fades at the surface, see ``_mass_effect``).
    """
    low, high = _mapped_extent(geom)
    margin = 6.0 + 4.0 * float(geom.elastic_coarse.std())
    start = np.clip(np.floor(low - margin), 0, None).astype(int)
    stop = np.minimum(np.ceil(high + margin).astype(int) + 1, BRATS_SHAPE)
    size = tuple(int(v) for v in (stop - start + 1) // 2)
    return start, size  # type: ignore[return-value]


def _affine_source(geom: _Geometry, grid: Sequence[np.ndarray], r: int) -> np.ndarray:
    """Row ``r`` of the affine part of the backward map applied to output coordinates ``grid``."""
    row = geom.matrix[r]
    out = np.full(grid[0].shape, geom.centre[r] + geom.shift[r] - row @ geom.centre, np.float32)
    for c in range(3):
        out += np.float32(row[c]) * grid[c]
    return out


def _surface_damping(geom: _Geometry, grid: Sequence[np.ndarray], skull_mm: float) -> np.ndarray:
    """0 at the template brain surface rising to 1 at ``skull_mm`` depth, on ``grid`` (computed at half density)."""
    coarse = [g[::2, ::2, ::2] for g in grid]
    template = np.stack([_affine_source(geom, coarse, r) for r in range(3)]).astype(np.float64) / 2.0
    depth = ndi.map_coordinates(_template_stats().depth, template, order=1, mode="nearest", prefilter=False)
    damp = _upsample2(np.clip(depth / skull_mm, 0.0, 1.0).astype(np.float32))
    pad = [(0, n - d) for n, d in zip(grid[0].shape, damp.shape)]  # even sizes lose one sample
    return np.pad(damp, pad, mode="edge") if any(p for _, p in pad) else damp


def _mass_effect(geom: _Geometry, grid: list[np.ndarray], skull_mm: float = 15.0) -> None:
    """Radial push of every expansion (lesions, ventricles) applied to ``grid`` in place.

    Sampling closer to a centre pushes tissue outward. The push fades within ``skull_mm`` of the
    brain surface (the skull holds the brain), so the cortex is compressed instead of bulging out.
    """
    if not geom.expansions:
        return
    shift = [np.zeros_like(grid[0]) for _ in range(3)]
    for centre, sigma, amplitude in geom.expansions:
        d = [g - np.float32(c) for g, c in zip(grid, centre)]
        push = np.exp((d[0] ** 2 + d[1] ** 2 + d[2] ** 2) * np.float32(-0.5 / sigma**2)) * np.float32(amplitude)
        for acc, di in zip(shift, d):
            acc += push * di
    damp = _surface_damping(geom, grid, skull_mm)
    for g, acc in zip(grid, shift):
        g -= acc * damp


def _source_coordinates(geom: _Geometry, origin: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Anatomy voxel sampled by each point of the 2 mm output grid, ``(3, *size)`` float32."""
    axes = [np.float32(o) + 2.0 * np.arange(n, dtype=np.float32) for o, n in zip(origin, size)]
    grid = np.meshgrid(*axes, indexing="ij", copy=True)
    _mass_effect(geom, grid)
    mats = [_gauss_matrix(n, k, geom.elastic_cell / 2) for n, k in zip(size, geom.elastic_coarse.shape[1:])]
    src = np.empty((3, *size), np.float32)
    for r in range(3):
        src[r] = _affine_source(geom, grid, r)
        src[r] += _separable(geom.elastic_coarse[r], *mats)
    return src


def _sharpen(maps: list[np.ndarray], powers: Sequence[float]) -> list[np.ndarray]:
    """Re-balance GM/WM/CSF partial volume with one power per tissue, keeping their sum.

    Powers > 1 sharpen the blurry template boundaries (individual brains are crisper than an
    average); a CSF power < 1 brings out the faint sulci of the average and widens CSF spaces
    (atrophy), as in the older patients of glioma cohorts.
    """
    total = maps[0] + maps[1] + maps[2]
    powered = [np.power(np.maximum(m, 0.0), np.float32(p)) for m, p in zip(maps, powers)]
    norm = total / np.maximum(powered[0] + powered[1] + powered[2], 1e-6)
    return [p * norm for p in powered]


def _vessel_map(rng: np.random.Generator, csf: np.ndarray) -> np.ndarray:
    """Tortuous tubes (intersection of two random level sets) running in CSF spaces, 0..1."""
    cell = rng.uniform(3.0, 5.0)  # knots every 6-10 mm on the 2 mm grid
    a = smooth_noise(rng, csf.shape, cell)
    b = smooth_noise(rng, csf.shape, cell)
    width = np.float32(rng.uniform(0.12, 0.22))
    tubes = np.exp(-(a * a + b * b) / (2.0 * width * width))
    return tubes * np.clip(csf * np.float32(1.6), 0.0, 1.0)


# Deep grey nuclei (basal ganglia, thalami) lie in this MNI152 ellipsoid (centre, semi-axes in mm).
_DEEP_GREY_CENTRE_MM = np.array([0.0, -8.0, 4.0])
_DEEP_GREY_AXES_MM = np.array([30.0, 32.0, 16.0])


def _deep_grey_weight(src: np.ndarray) -> np.ndarray:
    """0..1 weight of "deep" (nuclear) grey matter at template voxels ``src`` ``(3, ...)``, analytic.

    Deep grey matter is brighter than cortex on T1 and darker on T2: the weight is 1 inside the
    central 2/3 of the ellipsoid and fades to 0 at its border.
    """
    m = brats_to_mni_world()
    r2 = np.zeros(src.shape[1:], np.float32)
    for axis in range(3):  # brats_to_mni_world is diagonal: one template axis per MNI axis
        mni = src[axis] * np.float32(m[axis, axis]) + np.float32(m[axis, 3])
        r2 += ((mni - np.float32(_DEEP_GREY_CENTRE_MM[axis])) / np.float32(_DEEP_GREY_AXES_MM[axis])) ** 2
    return np.clip((1.0 - np.sqrt(r2)) * 3.0, 0.0, 1.0)


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear samples of a template map at float64 voxel coordinates (zero outside)."""
    return ndi.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0, prefilter=False)


def _warp_tissue(rng: np.random.Generator, anat: Anatomy, geom: _Geometry, powers: Sequence[float]) -> _Tissue:
    """Deform the template tissue maps into the output box (2 mm sampling, x2 linear upsampling).

    A 4 mm pass over the brain mask finds the deformed brain's box first, so the 2 mm pass only
    samples inside it.
    """
    origin, size = _work_grid(geom)
    src = _source_coordinates(geom, origin, size).astype(np.float64)  # float64: no conversion per map
    coarse_src = np.ascontiguousarray(src[:, ::2, ::2, ::2])
    coarse = sum(_sample(m, coarse_src) for m in (anat.gm, anat.wm, anat.csf))
    found = bounding_box(coarse > 0.1)
    if found is None:
        raise RuntimeError("phantom deformation moved the brain out of the grid; reduce PhantomConfig.translation_mm")
    box = tuple(slice(max(2 * s.start - 2, 0), min(2 * s.stop + 1, n)) for s, n in zip(found, size))
    src = np.ascontiguousarray(src[(slice(None), *box)])
    low = _sharpen([_sample(m, src) for m in (anat.gm, anat.wm, anat.csf)], powers)
    low.append(_vessel_map(rng, low[2]))
    low.append(low[0] * _deep_grey_weight(src))
    del src
    gm, wm, csf, vessels, deep = (np.clip(_upsample2(m), 0.0, 1.0) for m in low)
    texture = smooth_noise(rng, low[0].shape, rng.uniform(1.0, 2.0))  # 2-4 mm grain, 2 mm grid
    texture += np.float32(0.8) * smooth_noise(rng, low[0].shape, rng.uniform(4.0, 8.0))
    brain = (gm + wm + csf) > 0.5
    start = origin + 2 * np.array([s.start for s in box])
    return _Tissue(origin=start, gm=gm, wm=wm, csf=csf, brain=brain, vessels=vessels, deep=deep,
                   texture=_upsample2(texture))


# --------------------------------------------------------------------------- tumour


def _lesion_box(lesion: _Lesion, tissue: _Tissue) -> Box:
    """Box (tissue coordinates) that can hold the whole lesion including edema."""
    reach = 1.8 * lesion.wt_radius + 8.0
    c = lesion.centre - tissue.origin
    return tuple(slice(int(max(ci - reach, 0)), int(min(ci + reach + 1, n)))
                 for ci, n in zip(c, tissue.shape))  # type: ignore[return-value]


def _core_field(rng: np.random.Generator, lesion: _Lesion, box: Box, tissue: _Tissue) -> np.ndarray:
    """Irregular ellipsoidal distance ``s`` (1 ~ core surface) around the lesion centre."""
    c = lesion.centre - tissue.origin
    coords = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(ci) for s, ci in zip(box, c)]
    inv = (lesion.rotation / (lesion.axes[None, :] * lesion.tc_radius)).T.astype(np.float32)  # rows: axes
    q = np.zeros([s.stop - s.start for s in box], np.float32)
    for row in inv:
        u = row[0] * coords[0][:, None, None] + row[1] * coords[1][None, :, None] + row[2] * coords[2][None, None, :]
        q += u * u
    s = np.sqrt(q)
    shape = s.shape
    s += np.float32(rng.uniform(0.1, 0.35)) * smooth_noise(rng, shape, max(lesion.tc_radius * 0.6, 3.0))
    s += np.float32(rng.uniform(0.02, 0.06)) * smooth_noise(rng, shape, 2.5)
    return s


def _midline_crossing(geom: _Geometry, lesion: _Lesion, box: Box, origin: np.ndarray) -> np.ndarray:
    """How far (mm) each box voxel lies beyond the midline, seen from the lesion (0 on its own side).

    The falx stops edema; it crosses only through the corpus callosum, so crossing is penalised.
    """
    coords = [(np.arange(b.start, b.stop, dtype=np.float32) + np.float32(o)).reshape(shape)
              for b, o, shape in zip(box, origin, ((-1, 1, 1), (1, -1, 1), (1, 1, -1)))]
    side = np.sign(geom.midline_distance([np.float32(c) for c in lesion.centre])) or 1.0
    return np.maximum(-np.float32(side) * geom.midline_distance(coords), 0.0)


def _grow_lesion(rng: np.random.Generator, lesion: _Lesion, tissue: _Tissue, geom: _Geometry,
                 labels: np.ndarray, edema_grade: np.ndarray) -> None:
    """Write one lesion's NCR / ET / ED labels (and edema grade 0..1) into the box arrays, in place."""
    box = _lesion_box(lesion, tissue)
    s = _core_field(rng, lesion, box, tissue)
    free = tissue.brain[box] & (labels[box] == 0)
    csf = tissue.csf[box]
    core = _top_n(-s, free & (csf < 0.8), int(round(lesion.tc_ml * 1000)))
    ncr, et = _split_core(rng, lesion, core)

    # Edema: distance decay from the core, favoured by white matter, not in CSF spaces.
    tau = s[core].max() if core.any() else 1.0
    wm = tissue.wm[box]
    beta = rng.uniform(0.4, 1.6)
    decay = np.float32(lesion.tc_radius / max(0.6 * lesion.wt_radius, 3.0))
    log_p = -np.maximum(s - np.float32(tau), 0.0) * decay
    log_p += np.float32(beta) * np.log(np.float32(0.12) + wm)
    log_p += np.float32(rng.uniform(0.3, 0.9)) * smooth_noise(rng, s.shape, rng.uniform(5.0, 12.0))
    log_p -= np.float32(rng.uniform(0.15, 0.6)) * _midline_crossing(geom, lesion, box, tissue.origin)
    n_ed = int(round((lesion.wt_ml - lesion.tc_ml) * 1000))
    edema = _top_n(log_p, free & ~core & (csf < 0.5), n_ed)
    if edema.any():
        floor = log_p[edema].min()
        grade = np.clip((log_p - floor) / np.float32(3.0), 0.0, 1.0)
        edema_grade[box][edema] = grade[edema]
    sub = labels[box]
    sub[edema] = ED
    sub[ncr] = NCR
    sub[et] = ET


def _split_core(rng: np.random.Generator, lesion: _Lesion, core: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the core into NCR and an enhancing rim (none for non-enhancing lesions)."""
    if not lesion.enhancing or not core.any():
        return core, np.zeros_like(core)
    cbox = bounding_box(core)
    sub = np.pad(core[cbox], 1)
    depth = ndi.distance_transform_edt(sub)[1:-1, 1:-1, 1:-1]
    thickness = np.float32(lesion.rim_mm) * (1.0 + np.float32(0.35) * smooth_noise(rng, depth.shape, 4.0))
    rim = core[cbox] & (depth <= np.maximum(thickness, 1.0))
    if lesion.partial_rim:
        patchy = smooth_noise(rng, depth.shape, max(lesion.tc_radius * 0.5, 3.0))
        rim &= patchy > np.float32(rng.uniform(-1.0, 0.0))
    et = np.zeros_like(core)
    et[cbox] = rim
    return core & ~et, et


def _grow_tumour(rng: np.random.Generator, geom: _Geometry, tissue: _Tissue) -> tuple[np.ndarray, np.ndarray]:
    """Label map (internal classes) and edema grade of all lesions in the tissue box."""
    labels = np.zeros(tissue.shape, np.uint8)
    edema_grade = np.zeros(tissue.shape, np.float32)
    for lesion in geom.lesions:
        _grow_lesion(rng, lesion, tissue, geom, labels, edema_grade)
    return labels, edema_grade


# --------------------------------------------------------------------------- appearance

_TISSUES: tuple[str, ...] = ("wm", "gm", "deep", "csf", "ncr", "necrosis", "et", "ed", "vessel")
# Mean intensity relative to white matter, per modality (t1, t1ce, t2, flair); measured on the real
# BraTS cases (k-means tissue classes + the demo segmentation) and textbook glioma contrasts.
# "ncr" = solid non-enhancing core, "necrosis" = fluid necrosis; a lesion mixes the two.
_CANONICAL_MEANS: dict[str, tuple[float, float, float, float]] = {
    "wm": (1.00, 1.00, 1.00, 1.00),
    "gm": (0.85, 0.88, 1.50, 1.18),
    "deep": (0.93, 0.94, 1.22, 1.08),  # deep grey nuclei: between cortex and white matter
    "csf": (0.35, 0.40, 3.40, 0.40),
    "ncr": (0.52, 0.58, 3.00, 1.75),
    "necrosis": (0.40, 0.45, 3.40, 1.40),
    "et": (0.62, 1.90, 2.60, 1.90),
    "ed": (0.72, 0.72, 2.40, 1.85),
    "vessel": (0.60, 1.90, 0.45, 0.50),  # enhancing vessels / choroid plexus, flow voids on T2/FLAIR
}
# (a, b, ratio): enforce a >= ratio * b after randomisation, per modality. Ratios > 1 keep the
# radiological ordering; ratios < 1 cap the healthy GM/WM contrast at what real scanners show.
# The tumour core is darker on T1, brighter on T2 and darker on FLAIR than edema (real demo case,
# medians relative to healthy tissue: NCR 0.53 / 2.65 / 1.81, ED 0.84 / 1.98 / 2.12), so the core
# stays distinguishable from even the most severe edema.
_ORDER: dict[int, tuple[tuple[str, str, float], ...]] = {
    0: (("gm", "wm", 0.72), ("wm", "gm", 1.06), ("deep", "gm", 1.0), ("wm", "deep", 1.02), ("gm", "csf", 1.25),
        ("wm", "ed", 1.05), ("wm", "necrosis", 1.2), ("ed", "ncr", 1.12), ("ed", "necrosis", 1.3)),
    1: (("gm", "wm", 0.75), ("wm", "gm", 1.04), ("deep", "gm", 1.0), ("wm", "deep", 1.01), ("gm", "csf", 1.2),
        ("et", "wm", 1.4), ("et", "necrosis", 1.5), ("et", "ncr", 1.4), ("wm", "ed", 1.08)),
    2: (("wm", "gm", 0.55), ("csf", "gm", 1.3), ("gm", "wm", 1.1), ("gm", "deep", 1.0), ("deep", "wm", 1.03),
        ("ed", "wm", 1.4), ("ed", "gm", 1.15), ("necrosis", "wm", 1.6), ("ncr", "wm", 1.4),
        ("ncr", "ed", 1.12), ("necrosis", "ed", 1.25)),
    3: (("wm", "gm", 0.72), ("gm", "wm", 1.03), ("gm", "deep", 1.0), ("deep", "wm", 1.0), ("ed", "wm", 1.35),
        ("ed", "gm", 1.3), ("wm", "csf", 1.4), ("ed", "csf", 2.5), ("ed", "ncr", 1.1), ("ed", "necrosis", 1.25)),
}


# Edema severity: per-case factor ** severity (severity in [-0.8, 0.4]) on the edema means, from mild
# (near-WM T1, moderate T2) to severe vasogenic edema (T1-dark, very T2/FLAIR-bright); per modality.
_EDEMA_SEVERE_FACTOR: tuple[float, float, float, float] = (0.78, 0.8, 1.3, 1.18)


# Log-normal jitter (sd at strength 1) of the tissue means: wider for tumour tissues, whose contrast
# varies more between tumours and scanners than healthy tissue does.
_JITTER_HEALTHY = 0.09
_JITTER_TUMOUR = 0.15
_TUMOUR_TISSUES = frozenset({"ncr", "necrosis", "et", "ed"})


def _tissue_means(rng: np.random.Generator, strength: float) -> np.ndarray:
    """``(4, n_tissues)`` randomised tissue means (WM = 1): jitter + gamma, edema severity, radiological
    ordering kept."""
    means = np.array([_CANONICAL_MEANS[t] for t in _TISSUES], dtype=np.float64).T
    severity = rng.uniform(-0.8, 0.4)
    means[:, _TISSUES.index("ed")] *= np.asarray(_EDEMA_SEVERE_FACTOR) ** severity
    jitter = np.array([_JITTER_TUMOUR if t in _TUMOUR_TISSUES else _JITTER_HEALTHY for t in _TISSUES])
    means *= np.exp(rng.normal(0.0, 1.0, means.shape) * jitter * strength)
    gamma = np.exp(rng.normal(0.0, 0.15 * strength, (4, 1)))
    means = means**gamma
    means /= means[:, :1]
    for m, rules in _ORDER.items():
        for _ in range(2):
            for bright, dark, ratio in rules:
                i, j = _TISSUES.index(bright), _TISSUES.index(dark)
                means[m, i] = max(means[m, i], ratio * means[m, j])
    return means.astype(np.float32)


@dataclass
class _TumourWeights:
    """Soft (partial-volume) class weights inside the tumour box."""

    box: Box
    ncr: np.ndarray
    et: np.ndarray
    ed: np.ndarray  # already scaled by the edema grade
    texture: np.ndarray
    necrosis_mix: np.ndarray  # 0 = solid non-enhancing core, 1 = fluid necrosis


def _tumour_weights(rng: np.random.Generator, labels: np.ndarray, edema_grade: np.ndarray,
                    lesions: list[_Lesion]) -> _TumourWeights | None:
    """Blurred one-hot tumour classes (partial volume) and tumour texture in the tumour box."""
    box = bounding_box(labels > 0)
    if box is None:
        return None
    box = tuple(slice(max(s.start - 3, 0), min(s.stop + 3, n)) for s, n in zip(box, labels.shape))
    sub = labels[box]
    sigma = rng.uniform(0.4, 0.7)
    blur = [ndi.gaussian_filter((sub == k).astype(np.float32), sigma) for k in (NCR, ET, ED)]
    grade = ndi.gaussian_filter(edema_grade[box], sigma)
    ed = blur[2] * np.minimum(np.float32(rng.uniform(0.7, 1.0)) + np.float32(0.4) * grade, 1.0)
    shape = sub.shape
    texture = smooth_noise(rng, shape, rng.uniform(3.0, 6.0)) + np.float32(0.7) * smooth_noise(rng, shape, 8.0)
    enhancing = any(lesion.enhancing for lesion in lesions)
    base_mix = rng.uniform(0.5, 1.0) if enhancing else rng.uniform(0.0, 0.3)
    necrosis_mix = np.clip(np.float32(base_mix) + np.float32(0.25) * smooth_noise(rng, shape, 5.0), 0.0, 1.0)
    return _TumourWeights(box=box, ncr=blur[0], et=blur[1], ed=ed, texture=texture, necrosis_mix=necrosis_mix)


def _shading(tissue: _Tissue, texture_amp: float) -> np.ndarray:
    """Per-voxel factor shared by all modalities: multiplicative texture, minus the vessel fraction."""
    shade = np.multiply(tissue.texture, np.float32(texture_amp))
    shade += np.float32(1.0)
    shade *= np.float32(1.0) - tissue.vessels
    return shade


def _healthy_image(tissue: _Tissue, means: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Partial-volume mix of WM/GM/CSF means, textured, with vessels (one modality)."""
    w, g, d, c, v = (np.float32(means[_TISSUES.index(t)]) for t in ("wm", "gm", "deep", "csf", "vessel"))
    img = np.multiply(tissue.wm, w)
    tmp = np.multiply(tissue.gm, g)
    img += tmp
    np.multiply(tissue.deep, d - g, out=tmp)
    img += tmp
    np.multiply(tissue.csf, c, out=tmp)
    img += tmp
    img *= shade
    np.multiply(tissue.vessels, v, out=tmp)
    img += tmp
    return img


def _add_tumour(img: np.ndarray, tw: _TumourWeights, means: np.ndarray, amp: float) -> None:
    """Blend tumour classes (with their own texture) into one modality image, in place."""
    sub = img[tw.box]
    mu = {t: np.float32(means[_TISSUES.index(t)]) for t in ("ncr", "necrosis", "et", "ed")}
    tex = np.float32(1.0) + np.float32(1.0 * amp) * tw.texture
    core_mu = (mu["ncr"] + (mu["necrosis"] - mu["ncr"]) * tw.necrosis_mix) * tex
    keep = np.float32(1.0) - tw.ncr - tw.et - tw.ed
    sub *= np.clip(keep, 0.0, 1.0)
    sub += tw.ncr * core_mu
    sub += tw.et * (mu["et"] * (np.float32(1.0) + np.float32(1.5 * amp) * tw.texture))
    sub += tw.ed * (mu["ed"] * (np.float32(1.0) + np.float32(0.4 * amp) * tw.texture))


# --------------------------------------------------------------------------- acquisition


def _apply_bias(rng: np.random.Generator, img: np.ndarray, amplitude: float) -> None:
    """Multiply by a smooth bias field ``exp(F(x, y) + f(z))`` (cheap: no 3D exponential), in place."""
    nx, ny, nz = img.shape
    cell_xy, cell_z = rng.uniform(50.0, 110.0), rng.uniform(50.0, 110.0)
    kx, ky, kz = (int(math.ceil((n - 1) / c)) + 3 for n, c in ((nx, cell_xy), (ny, cell_xy), (nz, cell_z)))
    plane = _gauss_matrix(nx, kx, cell_xy) @ rng.standard_normal((kx, ky)).astype(np.float32)
    plane = plane @ _gauss_matrix(ny, ky, cell_xy).T
    axial = _gauss_matrix(nz, kz, cell_z) @ rng.standard_normal(kz).astype(np.float32)
    img *= np.exp(np.float32(amplitude) * plane)[:, :, None]
    img *= np.exp(np.float32(amplitude * 0.7) * axial)[None, None, :]


def _thick_slice_matrix(n: int, thickness: float, offset: float) -> np.ndarray:
    """``(n, n)`` operator: average over slabs of ``thickness`` voxels, sample, interpolate back linearly."""
    centres = np.arange(offset, n, thickness)
    if centres.size < 2:
        return np.eye(n, dtype=np.float32)
    sigma = thickness / 2.355
    profile = np.exp(-0.5 * ((np.arange(n)[None, :] - centres[:, None]) / sigma) ** 2)
    profile /= profile.sum(axis=1, keepdims=True)
    pos = np.clip((np.arange(n) - offset) / thickness, 0, centres.size - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, centres.size - 2)
    w = pos - lo
    up = np.zeros((n, centres.size))
    up[np.arange(n), lo] = 1 - w
    up[np.arange(n), lo + 1] += w
    return (up @ profile).astype(np.float32)


def _apply_along(img: np.ndarray, matrix: np.ndarray, axis: int) -> np.ndarray:
    """Apply an ``(n, n)`` matrix along one axis of a 3D array (one 2D GEMM; batched matmul is slow)."""
    moved = np.ascontiguousarray(np.moveaxis(img, axis, 0)) if axis else img
    out = (matrix @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis)) if axis else out


def _acquire(rng: np.random.Generator, cfg: PhantomConfig, img: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Scanner effects on one modality: bias, noise, thick slices or blur (relative scale, WM ~ 1)."""
    s = cfg.strength
    _apply_bias(rng, img, rng.uniform(0.0, 0.15) * s)
    noise_sd = rng.uniform(0.005, 0.01 + 0.03 * s)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sd)
    if rng.random() < cfg.p_thick_slices * min(s, 1.0):
        axis = int(rng.choice(3, p=[0.05, 0.05, 0.9]))
        thickness = rng.uniform(*cfg.slice_mm)
        img = _apply_along(img, _thick_slice_matrix(img.shape[axis], thickness, rng.uniform(0, thickness)), axis)
    elif rng.random() < 0.5:
        img = ndi.gaussian_filter1d(img, rng.uniform(0.3, 0.8), axis=2)
    np.maximum(img, np.float32(0.02), out=img)
    img *= brain
    return img


def _render_modality(rng: np.random.Generator, cfg: PhantomConfig, tissue: _Tissue, shade: np.ndarray,
                     weights: _TumourWeights | None, means: np.ndarray, integer: bool, out: np.ndarray) -> None:
    """Image one modality into ``out`` (the brain box of the output volume): anatomy, tumour, scanner."""
    img = _healthy_image(tissue, means, shade)
    if weights is not None:
        _add_tumour(img, weights, means, rng.uniform(0.06, 0.15))
    img = _acquire(rng, cfg, img, tissue.brain)
    level = np.exp(rng.uniform(*np.log(cfg.wm_level)))
    np.multiply(img, np.float32(level), out=out)
    if integer:  # raw scanner integers, never 0 inside the brain
        np.rint(out, out=out)
        np.maximum(out, np.float32(1.0), out=out, where=tissue.brain)


# --------------------------------------------------------------------------- public API


def phantom_name(seed: int) -> str:
    """Case id of a phantom."""
    return f"phantom-{seed:05d}"


def generate_phantom(seed: int, config: PhantomConfig | None = None, progress: Progress | None = None) -> Case:
    """Generate one synthetic glioma case on the BraTS grid.

    Args:
        seed: random seed; the same seed and config always give the same case.
        config: generator settings (default :class:`PhantomConfig`).
        progress: optional ``callback(fraction, message)``.

    Returns:
        :class:`core.io.case.Case` with float32 ``(4, 240, 240, 155)`` image (background exactly 0) and
        uint8 internal labels (1 NCR, 2 ED, 3 ET), BraTS affine/header, name ``phantom-SSSSS``.
    """
    return _generate(seed, config, progress, with_tissue=False)[0]


def generate_phantom_with_tissue(
    seed: int, config: PhantomConfig | None = None, progress: Progress | None = None
) -> tuple[Case, np.ndarray]:
    """Like :func:`generate_phantom`, plus the healthy tissue under the case.

    Returns:
        ``(case, tissue)``: ``tissue`` is uint8 ``(240, 240, 155)`` with the dominant tissue per voxel
        (see ``TISSUE_LABELS``: 0 outside the brain, 1 CSF, 2 GM, 3 WM), ignoring the tumour.
    """
    case, tissue = _generate(seed, config, progress, with_tissue=True)
    assert tissue is not None
    return case, tissue


def _dominant_tissue(tissue: _Tissue) -> np.ndarray:
    """1 CSF / 2 GM / 3 WM: the most probable tissue of each brain voxel, 0 outside."""
    labels = np.argmax(np.stack([tissue.csf, tissue.gm, tissue.wm]), axis=0).astype(np.uint8) + 1
    labels[~tissue.brain] = 0
    return labels


def _generate(seed: int, config: PhantomConfig | None, progress: Progress | None,
              with_tissue: bool) -> tuple[Case, np.ndarray | None]:
    """The whole pipeline (see the module docstring); BLAS single-threaded (faster on busy small machines)."""
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    report = progress or (lambda fraction, message: None)
    anat = load_anatomy()
    with threadpool_limits(limits=1, user_api="blas"):
        report(0.05, "planning anatomy and lesions")
        geom = _plan_geometry(rng, cfg)
        geom.lesions = _plan_lesions(rng, cfg, geom)
        geom.expansions += [(les.centre, max(les.wt_radius, 4.0), les.mass_amp) for les in geom.lesions]
        report(0.15, "deforming the brain")
        sharp = rng.uniform(1.2, 1.8)
        tissue = _warp_tissue(rng, anat, geom, powers=(sharp, sharp, rng.uniform(0.45, 0.8)))
        report(0.35, "growing the tumour")
        labels, edema_grade = _grow_tumour(rng, geom, tissue)
        weights = _tumour_weights(rng, labels, edema_grade, geom.lesions)

        means = _tissue_means(rng, cfg.strength)
        shade = _shading(tissue, rng.uniform(0.01, 0.035) * (1 + 0.5 * cfg.strength))
        integer = rng.random() < cfg.p_integer
        box = tuple(slice(int(o), int(o) + n) for o, n in zip(tissue.origin, tissue.shape))
        image = np.zeros((len(MODALITIES), *BRATS_SHAPE), np.float32)
        for m, modality in enumerate(MODALITIES):
            report(0.45 + 0.12 * m, f"imaging {modality}")
            _render_modality(rng, cfg, tissue, shade, weights, means[m], integer, out=image[(m, *box)])

    seg = np.zeros(BRATS_SHAPE, np.uint8)
    seg[box] = labels
    tissue_labels = None
    if with_tissue:
        tissue_labels = np.zeros(BRATS_SHAPE, np.uint8)
        tissue_labels[box] = _dominant_tissue(tissue)
    report(1.0, "done")
    case = Case(image=image, affine=BRATS_AFFINE.copy(), header=brats_header(np.float32), seg=seg,
                label_convention=None, files={}, naming=None, name=phantom_name(seed))
    return case, tissue_labels
