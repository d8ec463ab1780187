"""Training data for the U-Net: case producers, a case pool, patch sampling and augmentation.

Flow (all numpy; nothing here imports TensorFlow, so producer processes start light):

* **Producers** run in worker processes (``spawn``). A producer makes one training case at a time,
  either a fresh domain-randomised phantom (``core.synthesis.phantom.generate_phantom``, seeds
  ``worker, worker + workers, ...`` below :data:`VALIDATION_SEED_START`) or a random labelled case
  folder of real BraTS data (or a mix of both, :class:`ProducerSpec`), and ships it as a
  :class:`TrainingCase` (preprocessed exactly as at inference: ``core.preprocessing.preprocess.prepare_input``,
  cropped to the brain, float16).
* A :class:`CasePool` in the trainer keeps the last ``pool_size`` cases and swaps in one new case
  every ``patches_per_case`` patches, so each phantom (2-3 s to make) serves several patches and the
  producers only use the CPU the trainer can spare.
* :func:`sample_patch` draws a patch (tumour-centred with probability ``fg_fraction``, the tumour
  class picked uniformly among those present, nnU-Net style) with spatial augmentation (mirroring,
  occasional rotation + scaling, optional elastic deformation) and :func:`augment_intensity` (bias
  field, noise, blur, brightness, contrast, gamma, per-channel scale/shift, low-resolution
  simulation) inside the brain. :data:`REAL_DATA_AUGMENTATION` is the setting for real scans.
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from core.io.case import Case, CaseError, affine_spacing, find_case_files, load_case, load_label_map
from core.io.labels import ED, ET, NCR
from core.preprocessing.preprocess import prepare_input
from train.packed_format import SUFFIX as PACKED_SUFFIX
from train.packed_format import find_packed, is_packed, load_packed

VALIDATION_SEED_START = 1_000_000  # phantom seeds >= this are held out (never used for training)
TUMOUR_CLASSES = (NCR, ED, ET)
FIRST_CASE_TIMEOUT_S = 600


# --------------------------------------------------------------------------------------- cases


@dataclass
class TrainingCase:
    """One preprocessed case, cropped to the brain.

    Attributes:
        image: float16 ``(X, Y, Z, 4)`` z-scored network input (0 outside the brain).
        labels: uint8 ``(X, Y, Z)`` internal labels 0..3.
        name: case id.
        class_voxels: flat indices of each tumour class present (filled by :meth:`index`).
    """

    image: np.ndarray
    labels: np.ndarray
    name: str
    class_voxels: dict[int, np.ndarray] = field(default_factory=dict)

    def index(self) -> TrainingCase:
        """Cache the voxel indices of every tumour class (for tumour-centred sampling)."""
        flat = self.labels.ravel()
        self.class_voxels = {c: idx for c in TUMOUR_CLASSES if (idx := np.flatnonzero(flat == c)).size}
        return self


def training_case(case: Case) -> TrainingCase:
    """Preprocess a labelled case like inference does and crop it tightly to the brain.

    Raises:
        ValueError: the case has no segmentation.
    """
    if case.seg is None:
        raise ValueError(f"case {case.name!r} has no segmentation; training needs one")
    net_input, box, _ = prepare_input(case.image, multiple=1, margin=0)
    labels = box.apply(case.seg).astype(np.uint8)
    return TrainingCase(net_input.astype(np.float16), labels, case.name)


def case_folders(root: str | Path) -> list[Path]:
    """``root`` itself when it is a case folder, else its sub-folders that look like cases."""
    root = Path(root)
    try:
        find_case_files(root)
        return [root]
    except CaseError:
        pass
    folders = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            find_case_files(folder)
        except CaseError:
            continue
        folders.append(folder)
    return folders


@functools.lru_cache(maxsize=8)
def find_labelled_cases(root: str | Path) -> tuple[Path, ...]:
    """Labelled cases under ``root``: packed case files (``train.packed``) if it holds any, else the case
    folders (or ``root`` itself) that hold four modalities and a segmentation."""
    packed = find_packed(root)
    if packed:
        return tuple(packed)
    return tuple(folder for folder in case_folders(root) if "seg" in find_case_files(folder))


def case_id(path: str | Path) -> str:
    """Case id of a labelled case folder (its name) or packed case file (its name without the suffix)."""
    name = Path(path).name
    return name.removesuffix(PACKED_SUFFIX)


# Kinds of tumour that are rare among BraTS training cases and that the U-Net missed on unseen cases (issue 35).
RARE_SMALL_WT_ML = 30.0  # whole tumour under this volume is "small"
RARE_NCR_SHARE = 0.5  # non-enhancing core (NCR) at least this share of the tumour core is a "non-enhancing core"
RARE_NO_ET_ML = 0.5  # enhancing tumour under this volume counts as "no enhancement" (BraTS-style absent ET)


def rare_kinds(labels: np.ndarray, voxel_ml: float = 0.001) -> tuple[str, ...]:
    """The rare tumour kinds a reference label map (internal labels) shows.

    Returns:
        Any of ``"no-ET"`` (ET under :data:`RARE_NO_ET_ML`), ``"small"`` (WT under :data:`RARE_SMALL_WT_ML`)
        and ``"non-enhancing-core"`` (NCR at least :data:`RARE_NCR_SHARE` of the core), in that order.
    """
    counts = np.bincount(labels.ravel(), minlength=4)
    wt_ml, ncr, et = float(counts[1:].sum()) * voxel_ml, int(counts[NCR]), int(counts[ET])
    kinds = []
    if et * voxel_ml < RARE_NO_ET_ML:
        kinds.append("no-ET")
    if wt_ml < RARE_SMALL_WT_ML:
        kinds.append("small")
    if ncr + et and ncr / (ncr + et) >= RARE_NCR_SHARE:
        kinds.append("non-enhancing-core")
    return tuple(kinds)


def reference_labels(source: str | Path) -> tuple[np.ndarray, float]:
    """``(internal reference labels, mL per voxel)`` of a labelled case folder or packed case file."""
    if is_packed(source):
        return load_packed(source)[1], 0.001  # packed cases are on the BraTS 1 mm grid
    labels, affine, _, _ = load_label_map(find_case_files(source)["seg"])
    return labels, float(np.prod(affine_spacing(affine))) / 1000.0


def rare_case_weights(folders: tuple[str, ...], rare_weight: float) -> tuple[float, ...]:
    """Sampling weights that draw cases of a rare kind (:func:`rare_kinds`) ``rare_weight`` times as often.

    Returns:
        One weight per folder; empty (uniform draws, no reference read) when ``rare_weight`` is 1.
    """
    if rare_weight == 1:
        return ()
    return tuple(rare_weight if rare_kinds(*reference_labels(f)) else 1.0 for f in folders)


@dataclass(frozen=True)
class ProducerSpec:
    """What a producer process makes: phantoms, real labelled case folders, or a mix of both.

    Attributes:
        folders: labelled case folders or packed case files (``train.packed``) to draw real cases from
            (uniformly); empty: phantoms only.
        seed: first phantom seed and the seed of the case draws.
        phantom_strength: domain-randomisation strength of the phantoms.
        phantom_fraction: probability that a new case is a phantom when ``folders`` is not empty
            (0: real cases only). Ignored without folders (then every case is a phantom).
    """

    folders: tuple[str, ...] = ()
    seed: int = 0
    phantom_strength: float = 1.0
    phantom_fraction: float = 0.0
    weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.phantom_fraction <= 1.0:
            raise ValueError(f"phantom_fraction must be in [0, 1], got {self.phantom_fraction}")
        if self.weights and (len(self.weights) != len(self.folders) or min(self.weights) <= 0):
            raise ValueError(f"weights: one positive weight per folder expected ({len(self.folders)} folders), "
                             f"got {self.weights}")

    def draw_folder(self, rng: np.random.Generator) -> str:
        """A real case folder: uniformly, or in proportion to ``weights`` (one draw of ``rng`` either way)."""
        if not self.weights:
            return self.folders[int(rng.integers(len(self.folders)))]
        cumulative = np.cumsum(self.weights)
        return self.folders[int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))]

    def draws_phantom(self, rng: np.random.Generator) -> bool:
        """Whether the next case is a phantom (consumes one draw of ``rng`` when the data is mixed)."""
        if not self.folders:
            return True
        return self.phantom_fraction > 0 and rng.random() < self.phantom_fraction


def make_case(spec: ProducerSpec, worker: int, workers: int, k: int, rng: np.random.Generator) -> TrainingCase:
    """The ``k``-th case of producer ``worker`` (of ``workers``)."""
    if spec.draws_phantom(rng):
        from core.synthesis.phantom import PhantomConfig, generate_phantom  # heavy (anatomy); only in phantom producers

        seed = spec.seed + worker + k * workers
        if seed >= VALIDATION_SEED_START:
            raise RuntimeError("training phantom seeds ran into the held-out validation range")
        case = generate_phantom(seed, PhantomConfig(strength=spec.phantom_strength))
    else:
        source = spec.draw_folder(rng)
        if is_packed(source):
            return TrainingCase(*load_packed(source))
        case = load_case(source)
    return training_case(case)


def _produce(spec: ProducerSpec, worker: int, workers: int, out: mp.Queue, stop: mp.Event) -> None:
    """Worker-process loop: make cases and put them on ``out`` until ``stop`` is set."""
    rng = np.random.default_rng([spec.seed, worker])
    k = 0
    while not stop.is_set():
        item = make_case(spec, worker, workers, k, rng)
        k += 1
        _put_until_stopped(out, item, stop)


def _put_until_stopped(out: mp.Queue | queue.Queue, item: object, stop: mp.Event | threading.Event) -> bool:
    """Put ``item`` on ``out``, retrying every 0.5 s while it is full; false (not put) once ``stop`` is set."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.5)
            return True
        except queue.Full:
            continue
    return False


def _get_until_stopped(source: mp.Queue, stop: mp.Event) -> object | None:
    """Next item of ``source``, retrying every 0.5 s while it is empty; ``None`` once ``stop`` is set."""
    while not stop.is_set():
        try:
            return source.get(timeout=0.5)
        except queue.Empty:
            continue
    return None


class _WorkerProcesses:
    """Daemon worker processes that run until an event is set (context manager); subclasses fill
    ``_procs``, ``_stop`` and ``_queues``."""

    _procs: list
    _stop: mp.Event
    _queues: tuple

    def __enter__(self):
        for p in self._procs:
            p.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop and join the worker processes."""
        self._stop.set()
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        for q in self._queues:
            q.close()
            q.cancel_join_thread()

    def _raise_if_a_worker_died(self) -> None:
        for p in self._procs:
            if not p.is_alive() and p.exitcode not in (0, None):
                raise RuntimeError(f"{p.name} died (exit code {p.exitcode}); see its traceback above")


class CaseProducers(_WorkerProcesses):
    """Background processes that make training cases (context manager).

    Args:
        spec: what to make.
        workers: number of processes (0: make cases in the calling thread, for tests).
        max_queued: finished cases waiting to be taken, per worker.
    """

    def __init__(self, spec: ProducerSpec, workers: int = 1, max_queued: int = 1, slot: tuple[int, int] = (0, 1)):
        self.spec, self.workers = spec, workers
        self._k = 0
        self._slot = slot  # in-process mode: (this maker, of how many), so parallel makers draw distinct phantoms
        self._rng = np.random.default_rng([spec.seed, 10_000] + ([slot[0]] if slot[0] else []))
        ctx = mp.get_context("spawn")  # never fork a process that holds TensorFlow threads
        self._queue: mp.Queue = ctx.Queue(maxsize=max(1, workers * max_queued))
        self._stop = ctx.Event()
        self._procs = [ctx.Process(target=_produce, args=(spec, w, workers, self._queue, self._stop), daemon=True,
                                   name=f"case-producer-{w}") for w in range(workers)]
        self._queues = (self._queue,)

    def get(self, block: bool = True, timeout: float | None = None) -> TrainingCase | None:
        """Next finished case (``None`` when none is ready and ``block`` is false)."""
        if not self._procs:  # in-process mode
            case = make_case(self.spec, *self._slot, self._k, self._rng)
            self._k += 1
            return case.index()
        self._raise_if_a_worker_died()
        try:
            return self._queue.get(block=block, timeout=timeout).index()
        except queue.Empty:
            return None


class CasePool:
    """The cases patches are drawn from; one new case replaces the oldest every ``patches_per_case`` draws.

    Args:
        producers: source of new cases.
        pool_size: cases kept.
        patches_per_case: patches drawn between two replacements (each case then gives this many
            patches on average).
        min_cases: cases to wait for before the first draw.
        wait_for_cases: a due replacement waits for the next case instead of skipping it when none is
            ready, so the cases drawn depend on the seed alone, not on how fast the producers run (with
            one producer process: a reproducible run, slower when the producer falls behind).
    """

    def __init__(self, producers: CaseProducers, pool_size: int = 12, patches_per_case: int = 16, min_cases: int = 2,
                 wait_for_cases: bool = False):
        self.producers = producers
        self.wait_for_cases = wait_for_cases
        self.pool_size, self.patches_per_case = pool_size, patches_per_case
        self.cases: list[TrainingCase] = []
        self._since_swap = 0
        self.received = 0
        while len(self.cases) < min(min_cases, pool_size):
            self._add(self._wait_for_case())

    def _wait_for_case(self) -> TrainingCase:
        case = self.producers.get(block=True, timeout=FIRST_CASE_TIMEOUT_S)
        if case is None:
            raise RuntimeError(f"no training case arrived within {FIRST_CASE_TIMEOUT_S} s")
        return case

    def _add(self, case: TrainingCase | None) -> None:
        if case is None:
            return
        self.cases.append(case)
        self.received += 1
        if len(self.cases) > self.pool_size:
            self.cases.pop(0)

    def draw(self, rng: np.random.Generator) -> TrainingCase:
        """A random case of the pool (taking a new one in when it is due and ready, or waited for)."""
        self._since_swap += 1
        due = self._since_swap >= self.patches_per_case or len(self.cases) < self.pool_size
        if due:
            case = self._wait_for_case() if self.wait_for_cases else self.producers.get(block=False)
            if case is not None:
                self._add(case)
                self._since_swap = 0
        return self.cases[int(rng.integers(len(self.cases)))]


# ------------------------------------------------------------------------------------- patches


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations (nnU-Net-like defaults).

    Per-channel intensity augmentations act on z-scored values inside the brain only; the
    background stays exactly 0 as at inference.
    """

    p_flip: float = 0.5  # per axis
    p_rotate_scale: float = 0.2
    max_rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.2)
    p_noise: float = 0.15
    noise_std: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.15
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_scale_shift: float = 0.3
    channel_scale: tuple[float, float] = (0.9, 1.1)
    channel_shift: tuple[float, float] = (-0.2, 0.2)
    p_low_res: float = 0.15
    low_res_zoom: tuple[float, float] = (0.5, 1.0)
    p_elastic: float = 0.0  # smooth random displacement field (off in the shipped phantom runs)
    elastic_spacing: int = 32  # control-point spacing of the displacement field (voxels)
    elastic_std: tuple[float, float] = (1.0, 4.0)  # displacement standard deviation (voxels)
    p_bias: float = 0.0  # multiplicative low-order (quadratic) bias field, per channel
    bias_coefficient: float = 0.3  # polynomial coefficients drawn from U(-c, c) (log-field)
    bias_offset: tuple[float, float] = (1.5, 3.0)  # assumed mean/std of raw intensities (see _bias_field)
    p_lesion_contrast: float = 0.0  # fade the tumour toward the patch's healthy tissue (see fade_lesion)
    lesion_contrast: tuple[float, float] = (0.3, 1.0)  # kept share of the tumour's contrast, per channel
    lesion_edge: float = 2.0  # voxels: Gaussian softening of the faded region's edge


NO_AUGMENTATION = AugmentConfig(p_flip=0, p_rotate_scale=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                                p_gamma=0, p_scale_shift=0, p_low_res=0)

# nnU-Net-like setting for real scans: all of the above plus elastic deformation and a bias field,
# more frequent rotation/scaling (nnU-Net: 0.2 each of rotation and scaling, per patch).
REAL_DATA_AUGMENTATION = AugmentConfig(p_rotate_scale=0.3, p_elastic=0.2, p_bias=0.15)
# the same plus faded tumours: the validation misses are tumours fainter than any training case's
# (README, "Where it fails"); global intensity changes keep the z-scored tumour contrast, this does not
REAL_FADED_AUGMENTATION = AugmentConfig(p_rotate_scale=0.3, p_elastic=0.2, p_bias=0.15, p_lesion_contrast=0.3)


def _patch_centre(case: TrainingCase, fg: bool, rng: np.random.Generator) -> np.ndarray:
    """A tumour voxel of a random present class (``fg``) or a uniformly random voxel."""
    shape = case.labels.shape
    if fg and case.class_voxels:
        classes = sorted(case.class_voxels)
        voxels = case.class_voxels[classes[int(rng.integers(len(classes)))]]
        return np.array(np.unravel_index(int(voxels[int(rng.integers(voxels.size))]), shape))
    return np.array([int(rng.integers(n)) for n in shape])


def _crop(volume: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """``size``-cube of ``volume`` starting at ``start`` (may stick out; outside is zero)."""
    out = np.zeros((size, size, size) + volume.shape[3:], dtype=volume.dtype)
    src, dst = [], []
    for axis in range(3):
        lo, hi = max(int(start[axis]), 0), min(int(start[axis]) + size, volume.shape[axis])
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(start[axis]), hi - int(start[axis])))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _rotation_matrix(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    mat = np.eye(3)
    for axis in range(3):
        a = np.deg2rad(rng.uniform(-max_deg, max_deg))
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i] = rot[j, j] = np.cos(a)
        rot[i, j], rot[j, i] = -np.sin(a), np.sin(a)
        mat = mat @ rot
    return mat


def _displacement_field(size: int, spacing: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacements ``(3, size, size, size)`` in voxels (cubic upsampling of a coarse grid)."""
    coarse = max(2, int(np.ceil(size / spacing)) + 1)
    field = rng.normal(0.0, std, (3, coarse, coarse, coarse))
    zoom = size / coarse
    return np.stack([ndimage.zoom(f, zoom, order=3, mode="nearest", grid_mode=True) for f in field])


def _elastic_patch(case: TrainingCase, centre: np.ndarray, size: int, matrix: np.ndarray, displacement: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Patch sampled at ``matrix @ grid + displacement`` around ``centre`` (linear image, nearest labels)."""
    half = (size - 1) / 2.0
    grid = np.indices((size,) * 3, dtype=np.float32).reshape(3, -1) - half
    coords = (matrix @ grid).reshape((3,) + (size,) * 3) + displacement + centre[:, None, None, None]
    lo = np.maximum(np.floor(coords.reshape(3, -1).min(axis=1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(coords.reshape(3, -1).max(axis=1)).astype(int) + 2, case.labels.shape)
    if np.any(hi <= lo):
        return (np.zeros((size,) * 3 + (case.image.shape[-1],), np.float32), np.zeros((size,) * 3, np.uint8))
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    coords = coords - lo[:, None, None, None]
    image = np.stack([ndimage.map_coordinates(case.image[region + (c,)].astype(np.float32), coords, order=1, cval=0.0)
                      for c in range(case.image.shape[-1])], axis=-1)
    labels = ndimage.map_coordinates(case.labels[region], coords, order=0, cval=0)
    return image, labels.astype(np.uint8)


def _bias_field(shape: tuple[int, ...], coefficient: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative field ``exp(p(x))`` with ``p`` a random polynomial of degree <= 2 over [-1, 1]^3."""
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    log_field = np.zeros(shape, np.float32)
    for i in range(3):
        for j in range(3):
            for k in range(3):
                if 0 < i + j + k <= 2:
                    log_field += rng.uniform(-coefficient, coefficient) * axes[0] ** i * axes[1] ** j * axes[2] ** k
    return np.exp(log_field)


def _warped_patch(case: TrainingCase, centre: np.ndarray, size: int, matrix: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Patch sampled through ``matrix`` (output -> input voxel map about the patch centre)."""
    half = (size - 1) / 2.0
    offset = centre - matrix @ np.full(3, half)
    # Only read the input region the patch can reach (plus interpolation margin).
    corners = np.array([[i, j, k] for i in (0, size - 1) for j in (0, size - 1) for k in (0, size - 1)], float)
    reach = corners @ matrix.T + offset
    lo = np.maximum(np.floor(reach.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(reach.max(axis=0)).astype(int) + 2, case.labels.shape)
    if np.any(hi <= lo):
        return (np.zeros((size,) * 3 + (case.image.shape[-1],), np.float32), np.zeros((size,) * 3, np.uint8))
    region = tuple(slice(a, b) for a, b in zip(lo, hi))
    offset = offset - lo
    image = np.stack([ndimage.affine_transform(case.image[region + (c,)].astype(np.float32), matrix, offset,
                                               output_shape=(size,) * 3, order=1, cval=0.0)
                      for c in range(case.image.shape[-1])], axis=-1)
    labels = ndimage.affine_transform(case.labels[region], matrix, offset, output_shape=(size,) * 3, order=0, cval=0)
    return image, labels


def fade_lesion(image: np.ndarray, labels: np.ndarray, brain: np.ndarray, rng: np.random.Generator,
                aug: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Lower the tumour's contrast to the patch's healthy tissue, per channel (in place).

    Each channel keeps a share ``f ~ U(lesion_contrast)`` of its tumour contrast: ``x <- x - w (1 - f) (x - h)``
    with ``h`` the median of the healthy brain voxels of the patch and ``w`` the tumour mask softened by a Gaussian
    of ``lesion_edge`` voxels (1 inside, fading out at the border). Voxels outside ``brain`` and far from the
    tumour are unchanged; the labels are not touched.

    Args:
        image: float32 ``(X, Y, Z, C)`` z-scored patch.
        labels: ``(X, Y, Z)`` labels of the patch (non-zero = tumour).
        brain: bool ``(X, Y, Z)``.
        rng: random generator.
        aug: ``lesion_contrast`` and ``lesion_edge``.
    """
    tumour = np.asarray(labels) > 0
    healthy = brain & ~ndimage.binary_dilation(tumour, iterations=2)
    if not tumour.any() or healthy.sum() < 100:
        return image
    weight = np.clip(ndimage.gaussian_filter(tumour.astype(np.float32), aug.lesion_edge) * 2.0, 0.0, 1.0)
    weight[weight < 1e-3] = 0.0  # the Gaussian's far tail: leave that tissue exactly as it was
    weight = np.maximum(weight, tumour) * brain
    for c in range(image.shape[-1]):
        kept = rng.uniform(*aug.lesion_contrast)
        level = float(np.median(image[..., c][healthy]))
        image[..., c] -= weight * (1.0 - kept) * (image[..., c] - level)
    return image


def augment_intensity(image: np.ndarray, brain: np.ndarray, rng: np.random.Generator,
                      aug: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Random per-channel intensity changes of a z-scored patch, inside ``brain`` only (in place).

    Args:
        image: float32 ``(X, Y, Z, C)``.
        brain: bool ``(X, Y, Z)``; voxels outside stay 0.
        rng: random generator.
        aug: probabilities and ranges.
    """
    if not brain.any():
        return image
    for c in range(image.shape[-1]):
        ch = image[..., c]
        if rng.random() < aug.p_bias:
            # The patch is z-scored: a multiplicative field f on raw intensities r = z * std + mean is
            # z' = (z + m) * f - m with m = mean / std of the channel, drawn from a typical range.
            offset = rng.uniform(*aug.bias_offset)
            ch = (ch + offset) * _bias_field(ch.shape, aug.bias_coefficient, rng) - offset
        if rng.random() < aug.p_low_res:
            zoom = rng.uniform(*aug.low_res_zoom)
            small = ndimage.zoom(ch, zoom, order=0)
            ch = ndimage.zoom(small, np.array(ch.shape) / np.array(small.shape), order=1)  # back to ch.shape
        if rng.random() < aug.p_blur:
            ch = ndimage.gaussian_filter(ch, rng.uniform(*aug.blur_sigma))
        values = ch[brain]
        if rng.random() < aug.p_gamma:
            lo, hi = float(values.min()), float(values.max())
            mean, std = float(values.mean()), float(values.std())
            span = max(hi - lo, 1e-6)
            values = ((values - lo) / span) ** rng.uniform(*aug.gamma) * span + lo
            values = (values - values.mean()) / max(float(values.std()), 1e-6) * std + mean
        if rng.random() < aug.p_brightness:
            values = values * rng.uniform(*aug.brightness)
        if rng.random() < aug.p_contrast:
            mean = values.mean()
            values = (values - mean) * rng.uniform(*aug.contrast) + mean
        if rng.random() < aug.p_scale_shift:
            values = values * rng.uniform(*aug.channel_scale) + rng.uniform(*aug.channel_shift)
        if rng.random() < aug.p_noise:
            values = values + rng.normal(0.0, rng.uniform(*aug.noise_std), values.shape)
        out = np.zeros(ch.shape, np.float32)
        out[brain] = values
        image[..., c] = out
    return image


def sample_patch(case: TrainingCase, size: int, rng: np.random.Generator, fg_fraction: float = 0.5,
                 aug: AugmentConfig = AugmentConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One augmented training patch.

    Args:
        case: indexed :class:`TrainingCase`.
        size: patch edge (voxels).
        rng: random generator.
        fg_fraction: probability of centring the patch on a tumour voxel.
        aug: augmentation settings (:data:`NO_AUGMENTATION` for none).

    Returns:
        ``(image, labels)``: float32 ``(size, size, size, 4)`` and uint8 ``(size, size, size)``.
    """
    centre = _patch_centre(case, rng.random() < fg_fraction, rng)
    rotate = rng.random() < aug.p_rotate_scale
    matrix = _rotation_matrix(rng, aug.max_rotation_deg) / rng.uniform(*aug.scale) if rotate else np.eye(3)
    if aug.p_elastic > 0 and rng.random() < aug.p_elastic:
        displacement = _displacement_field(size, aug.elastic_spacing, rng.uniform(*aug.elastic_std), rng)
        image, labels = _elastic_patch(case, centre.astype(float), size, matrix, displacement)
    elif rotate:
        image, labels = _warped_patch(case, centre.astype(float), size, matrix)
    else:
        start = centre - size // 2
        image, labels = _crop(case.image, start, size).astype(np.float32), _crop(case.labels, start, size)
    for axis in range(3):
        if rng.random() < aug.p_flip:
            image, labels = np.flip(image, axis), np.flip(labels, axis)
    image, labels = np.ascontiguousarray(image), np.ascontiguousarray(labels)
    brain = np.any(image != 0, axis=-1)
    if aug.p_lesion_contrast > 0 and rng.random() < aug.p_lesion_contrast:
        fade_lesion(image, labels, brain, rng, aug)
    return augment_intensity(image, brain, rng, aug), labels


def patch_stream(pool: CasePool, size: int, seed: int, fg_fraction: float = 0.5,
                 aug: AugmentConfig = AugmentConfig(), worker: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(image, labels)`` patches from ``pool`` (``worker`` > 0: an independent stream of one
    :class:`ParallelPatches` process)."""
    rng = np.random.default_rng([seed, 20_000] + ([worker] if worker else []))
    while True:
        yield sample_patch(pool.draw(rng), size, rng, fg_fraction, aug)


class Prefetcher:
    """Runs an iterator in a daemon thread and buffers its items (numpy work overlaps training)."""

    def __init__(self, source: Iterator, buffer: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=buffer)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source,), daemon=True, name="patch-prefetch")
        self._thread.start()

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                if not _put_until_stopped(self._queue, item, self._stop):
                    return
        except BaseException as exc:  # surfaced in __next__
            self._error = exc
            self._queue.put(None)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self):
        while True:  # polls, so a consumer thread (tf.data's generator thread) is not left blocked after close()
            if self._stop.is_set():
                raise StopIteration
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        if item is None and self._error is not None:
            raise RuntimeError(f"patch sampling failed: {self._error!r}") from self._error
        return item

    def close(self) -> None:
        """Stop the thread (it exits at its next put) and end the iteration (``StopIteration`` within 0.5 s)."""
        self._stop.set()


def _sample_patches(spec: ProducerSpec, worker: int, workers: int, pool_size: int, patches_per_case: int,
                    stream: Callable[..., Iterator], out: mp.Queue, stop: mp.Event,
                    shared: tuple[str, tuple[int, ...], tuple[int, ...], mp.Queue] | None = None) -> None:
    """Process loop of :class:`ParallelPatches`: its own case pool and patch stream.

    A patch goes into a free slot of the shared-memory ring (``shared``: segment name, image and label
    shapes, queue of free slot numbers) and only the slot number travels; without ``shared`` the patch
    itself is pickled onto ``out`` as float16.
    """
    from multiprocessing import shared_memory

    producers = CaseProducers(spec, workers=0, slot=(worker, workers))
    pool = CasePool(producers, pool_size=pool_size, patches_per_case=patches_per_case)
    ring = shared_memory.SharedMemory(name=shared[0]) if shared else None
    try:
        images, labels_ring = _ring_arrays(ring, shared[1], shared[2]) if ring else (None, None)
        for image, labels in stream(pool, worker=worker):
            if ring is None:
                item = (image.astype(np.float16), labels)
            else:
                item = _get_until_stopped(shared[3], stop)  # a free slot
                if item is None:
                    return
                images[item], labels_ring[item] = image, labels
            if not _put_until_stopped(out, item, stop):
                return
    finally:
        if ring is not None:
            ring.close()


def _ring_arrays(ring, image_shape: tuple[int, ...], labels_shape: tuple[int, ...]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """float16 image slots and uint8 label slots laid out in the shared-memory segment ``ring``."""
    slots = ring.size // (2 * math.prod(image_shape) + math.prod(labels_shape))
    images = np.ndarray((slots, *image_shape), np.float16, buffer=ring.buf)
    labels = np.ndarray((slots, *labels_shape), np.uint8, buffer=ring.buf, offset=images.nbytes)
    return images, labels


class ParallelPatches(_WorkerProcesses):
    """Training patches made by ``workers`` processes, each with its own case pool (context manager, iterator).

    For accelerators, where one sampling thread cannot keep up: every process loads cases like an
    in-process :class:`CaseProducers` (phantom seeds interleaved across processes) and runs
    ``stream(pool, worker=w)``. With ``shapes`` the patches travel through a shared-memory ring of
    float16 slots and only slot numbers go through the queue (pickling 17 MB patches through a pipe
    capped a lent GPU at ~3 patches/s); without, they are pickled as float16. They come out as float32.

    Args:
        spec: what the cases are.
        workers: processes (>= 1).
        pool_size: cases each process keeps.
        patches_per_case: patches drawn between two case swaps in a process.
        stream: picklable ``(pool, worker=w) -> iterator of (image, labels)``, e.g. a
            ``functools.partial`` of :func:`patch_stream`.
        buffer: finished patches waiting, per process.
        shapes: ``(image shape, labels shape)`` of every patch, to use the shared-memory ring.
    """

    def __init__(self, spec: ProducerSpec, workers: int, pool_size: int, patches_per_case: int,
                 stream: Callable[..., Iterator], buffer: int = 2,
                 shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None):
        from multiprocessing import shared_memory

        if workers < 1:
            raise ValueError(f"ParallelPatches needs workers >= 1, got {workers}")
        ctx = mp.get_context("spawn")
        slots = workers * buffer
        self._queue: mp.Queue = ctx.Queue(maxsize=slots)
        self._stop = ctx.Event()
        self._ring = None
        shared = None
        if shapes is not None:
            image_shape, labels_shape = tuple(shapes[0]), tuple(shapes[1])
            size = slots * (2 * math.prod(image_shape) + math.prod(labels_shape))
            self._ring = shared_memory.SharedMemory(create=True, size=size)
            self._images, self._labels = _ring_arrays(self._ring, image_shape, labels_shape)
            self._free: mp.Queue = ctx.Queue()
            for slot in range(slots):
                self._free.put(slot)
            shared = (self._ring.name, image_shape, labels_shape, self._free)
        self._procs = [ctx.Process(target=_sample_patches, daemon=True, name=f"patch-sampler-{w}",
                                   args=(spec, w, workers, pool_size, patches_per_case, stream, self._queue,
                                         self._stop, shared))
                       for w in range(workers)]
        self._queues = (self._queue, self._free) if shapes is not None else (self._queue,)
        self.received = 0
        self.wait_s = 0.0  # time spent waiting for patches (the trainer was faster than the samplers)

    def __iter__(self) -> ParallelPatches:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        start = time.monotonic()
        while True:
            if self._stop.is_set():  # closed: end the stream (a consumer thread is not left waiting)
                raise StopIteration
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                self._raise_if_a_worker_died()
                if time.monotonic() - start > FIRST_CASE_TIMEOUT_S:
                    raise RuntimeError(f"no training patch arrived within {FIRST_CASE_TIMEOUT_S} s") from None
        self.wait_s += time.monotonic() - start
        self.received += 1
        if self._ring is None:
            image, labels = item
            return image.astype(np.float32), labels
        image, labels = self._images[item].astype(np.float32), self._labels[item].copy()
        self._free.put(item)
        return image, labels

    def close(self) -> None:
        """Stop and join the processes; free the shared memory."""
        super().close()
        if self._ring is not None:
            self._images = self._labels = None
            self._ring.close()
            self._ring.unlink()
            self._ring = None


def batches(samples: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group ``(image, labels)`` samples into stacked batches."""
    while True:
        items = [next(samples) for _ in range(batch_size)]
        yield np.stack([i for i, _ in items]), np.stack([lab for _, lab in items])


def held_out_phantoms(count: int, strength: float = 1.0, start: int = VALIDATION_SEED_START) -> list[Case]:
    """Validation phantoms with seeds ``start .. start + count - 1`` (never used for training)."""
    from core.synthesis.phantom import PhantomConfig, generate_phantom

    return [generate_phantom(start + i, PhantomConfig(strength=strength)) for i in range(count)]
