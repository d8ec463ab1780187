"""Insert a tumour into a real brain: a host case + a target label map -> generated cases.

API (used by ``core.generate --host``, the app and the evaluation)::

    model = load_insertion_model(default_insertion_path())
    cases = insert_tumour(host, target, model, n_samples=3, seed=0)      # host: core.io.case.Case

The host's own tumour (``host_tumour=``, else ``host.seg``, else the U-Net passed as ``unet=``) and the target
``T`` define the region ``R`` (:func:`core.synthesis.region.insertion_region`); the generator paints ``R`` on a
1 mm crop around it, and each result is the host outside ``R`` voxel for voxel (same dtype, affine and header),
blended into it at ``R``'s border. Samples (temperature > 0) carry noise with the host's own spectrum and level
(:mod:`core.synthesis.texture`), so the fill is as grainy as the scan around it. Where the host had tumour and
``T`` is empty, healthy tissue is filled in. Each tumour class is then placed at its real position in the host's own
display window and ``R`` is kept under the window's top (:mod:`core.synthesis.levels`, issue 36: no saturated
"white plate" on faint hosts).
Generation runs in the models' (BraTS, LPS) voxel orientation and the images are turned back exactly
(``core.io.orientation``). ``.seg`` of each result is ``T``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from core.io.case import MODALITIES, Case, CaseError, affine_spacing
from core.io.orientation import Reorientation, reorientation
from core.io.weights import ModelLoadError, load_keras_file, shipped_path
from core.preprocessing.preprocess import CropBox, brain_mask
from core.synthesis import region as rg
from core.synthesis.calibration import bias_field, calibrate
from core.synthesis.generate import SPACING_TOLERANCE, check_mask, sample_seed
from core.synthesis.levels import HostWindow, apply_host_levels, host_window
from core.synthesis.texture import HostTexture, add_texture, host_texture
from core.synthesis.vaegan import InsertionVAEGAN

import keras  # noqa: E402

Progress = Callable[[float, str], None]
TRAIN_COMMAND = "python -m train.insertion"
# sampling policy where bfloat16 is native (AVX512_BF16 / AMX / a GPU: measured 1.6x faster generator, samples within
# ~0.01 z); where it is emulated (this project's AVX2 machine) float32 is several times faster (issue 36)
INFERENCE_PRECISION = "mixed_bfloat16"


def default_insertion_path() -> Path:
    """Path of the shipped insertion model (``weights/insertion.keras``)."""
    return shipped_path("insertion")


def sampling_precision(precision: str | None = "auto") -> str | None:
    """The Keras policy sampling runs in: ``"auto"`` gives :data:`INFERENCE_PRECISION` where bfloat16 is native and
    float32 (``None``) where it would be emulated, as the U-Net does (``core.segmentation.precision``;
    ``BRATS_INFERENCE_PRECISION`` overrides); any other value is returned as it is."""
    if precision != "auto":
        return precision
    from core.segmentation.precision import target_policy

    policy = target_policy(INFERENCE_PRECISION)
    return None if policy == "float32" else policy


def load_insertion_model(path: str | Path, precision: str | None = "auto") -> InsertionVAEGAN:
    """Load an insertion model from a ``.keras`` file with ``safe_mode=True`` (no code execution).

    Args:
        path: the ``.keras`` file.
        precision: Keras dtype policy sampling runs in (:meth:`InsertionVAEGAN.set_inference_precision`); default
            ``"auto"`` (:func:`sampling_precision`: mixed bfloat16 where the machine computes it natively, else
            float32), ``None``: float32 (training from the file, exact comparisons).

    Raises:
        ModelLoadError: missing, corrupt or unsafe file, or another kind of model.
    """
    model = load_keras_file(path, "insertion model", TRAIN_COMMAND)
    if not isinstance(model, InsertionVAEGAN):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not an insertion VAE-GAN "
                             f"(core.synthesis.vaegan.InsertionVAEGAN); use a file saved by `{TRAIN_COMMAND}`.")
    model.set_inference_precision(sampling_precision(precision))
    return model


@dataclass
class InsertionPlan:
    """Everything one insertion needs, in the models' orientation (shared by all samples of a target).

    Attributes:
        turn: source grid <-> model orientation.
        image: host image ``(4, X, Y, Z)`` in model orientation.
        region: bool ``R`` in model orientation.
        box: the 1 mm crop around ``R``.
        context: generator context ``(x, y, z, 4)`` of the crop.
        cond: generator condition ``(x, y, z, 5)`` of the crop.
        alpha: blend weight of the crop.
        mean, std, floor: the host's healthy intensity statistics per modality.
        healthy: bool healthy context of the crop (brain outside ``R``) the host's texture is measured on.
        labels: the target's internal labels 0..3 on the crop (the tumour class each generated voxel is).
        crop_region: ``R`` on the crop.
        bias: the generator's per-class intensity bias on the crop
            (:func:`core.synthesis.calibration.bias_field`; ``None`` without labels).
        window: the host's display window and healthy median per modality (:mod:`core.synthesis.levels`).

    ``texture`` (the host's noise spectrum and level next to ``R``; ``None``: too little healthy context) is measured
    on first use: temperature-0 fills never need it.
    """

    turn: Reorientation
    image: np.ndarray
    region: np.ndarray
    box: CropBox
    context: np.ndarray
    cond: np.ndarray
    alpha: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    floor: np.ndarray
    healthy: np.ndarray | None = None
    labels: np.ndarray | None = None
    crop_region: np.ndarray | None = None
    bias: np.ndarray | None = None
    window: HostWindow | None = None

    def __post_init__(self) -> None:
        if self.crop_region is None:
            self.crop_region = self.box.apply(self.region)
        if self.bias is None and self.labels is not None:
            self.bias = bias_field(self.labels, self.context.shape[-1])

    @cached_property
    def texture(self) -> HostTexture | None:
        """The host's texture around ``R`` (:func:`core.synthesis.texture.host_texture`), measured once."""
        return None if self.healthy is None else host_texture(self.context, self.healthy)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the generator's crop."""
        return tuple(int(s) for s in self.context.shape[:3])  # type: ignore[return-value]

    def region_on_host(self) -> np.ndarray:
        """``R`` on the host's own grid."""
        return np.ascontiguousarray(self.turn.to_source(self.region))


def _host_tumour(host: Case, host_tumour: np.ndarray | None, unet: Any, name: str) -> np.ndarray:
    if host_tumour is not None:
        tumour = np.asarray(host_tumour)
        source = "host_tumour"
    elif host.seg is not None:
        return np.asarray(host.seg) > 0
    elif unet is not None:
        from core.segmentation.segment import segment_oriented

        return segment_oriented(host, unet).labels > 0
    else:
        raise CaseError(f"host {host.name!r} has no segmentation: its own tumour must be known to replace it; "
                        "load the host with its seg file, or pass the U-Net (unet= / the CLI does it) or "
                        "host_tumour=.")
    if tumour.shape != host.shape:
        raise CaseError(f"{name}: {source} {tumour.shape} and host {host.shape} differ in shape")
    return tumour > 0


def plan_insertion(host: Case, target: np.ndarray, *, host_tumour: np.ndarray | None = None, unet: Any = None,
                   margin: float = rg.MARGIN, name: str = "mask") -> InsertionPlan:
    """Check the inputs and prepare the crop, region, condition and blend of an insertion.

    Raises:
        CaseError: target of another shape or with unknown labels, a host that is not 1 mm, a host without a
            known tumour (and no U-Net), or nothing to generate (empty target and tumour-free host).
    """
    image = np.asarray(host.image)
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise CaseError(f"host {host.name!r}: image shape {image.shape} is not (4, X, Y, Z)")
    target = check_mask(target, name)
    if target.shape != host.shape:
        raise CaseError(f"{name}: label map {target.shape} is not on the host's grid {host.shape}; draw or "
                        "resample the mask on the host case's grid (same shape and affine).")
    zooms = np.asarray(affine_spacing(host.affine))
    if np.any(np.abs(zooms - 1.0) > SPACING_TOLERANCE):
        raise CaseError(f"host {host.name!r}: voxel size {' x '.join(f'{float(z):.3g}' for z in zooms)} mm is not "
                        "1 mm; the insertion model works at 1 mm: resample the host (and the mask) to 1 mm first.")
    tumour = _host_tumour(host, host_tumour, unet, name)
    turn = reorientation(host.affine, host.shape)
    oriented = np.ascontiguousarray(turn.to_model(image))
    target_m = np.ascontiguousarray(turn.to_model(target))
    host_brain = brain_mask(oriented)
    brain = host_brain | (target_m > 0)
    region = rg.insertion_region(target_m, np.ascontiguousarray(turn.to_model(tumour)), brain, margin)
    if not region.any():
        raise CaseError(f"{name}: the target holds no tumour and the host has none either: nothing to generate; "
                        "draw a tumour on the mask.")
    mean, std = rg.healthy_stats(oriented, brain, region)
    box = rg.region_box(region)
    crop_brain, crop_region = box.apply(brain), box.apply(region)
    zscores = rg.normalise(box.apply(oriented), crop_brain, mean, std)
    context = rg.masked_context(zscores, crop_region)
    crop_target = box.apply(target_m)
    return InsertionPlan(
        turn=turn, image=oriented, region=region, box=box, context=context,
        cond=rg.condition(crop_target, crop_region, crop_brain),
        alpha=rg.blend_alpha(crop_region, crop_brain), mean=mean, std=std, floor=rg.brain_floor(oriented, brain),
        healthy=crop_brain & ~crop_region, labels=crop_target, crop_region=crop_region,
        window=host_window(oriented, host_brain, host_brain & ~region))


def fill(plan: InsertionPlan, model: InsertionVAEGAN, z: Any, *, texture: float = 0.0, texture_seed: int = 0,
         calibrated: bool = True) -> np.ndarray:
    """The generator's fill of the crop from latent ``z``: channel-last host z-scores ``(x, y, z, 4)``.

    Args:
        plan: from :func:`plan_insertion`.
        model: the generator.
        z: latent sample (``model.sample_latent``).
        texture: strength of the host-matched scanner noise added inside ``R``
            (:func:`core.synthesis.texture.add_texture`; 0: the generator's smooth fill alone).
        texture_seed: seed of that noise.
        calibrated: remove the generator's per-class intensity bias (:mod:`core.synthesis.calibration`); False:
            the raw generator (what ``bench/analysis/insertion_calibration.py`` measures that bias on).
    """
    generated = keras.ops.convert_to_numpy(model.generate(plan.context[None], plan.cond[None], z))[0]
    if calibrated and plan.labels is not None:
        generated = calibrate(generated, plan.labels, plan.crop_region, field=plan.bias)
    if texture > 0 and plan.texture is not None:
        generated = add_texture(generated, plan.texture, plan.crop_region,
                                np.random.default_rng(texture_seed), strength=texture, labels=plan.labels)
    return generated


def place(plan: InsertionPlan, generated: np.ndarray, *, host_levels: bool = True) -> np.ndarray:
    """The host image with ``R`` from a :func:`fill`, on the host's own grid (``(4, X, Y, Z)``).

    Args:
        plan: from :func:`plan_insertion`.
        generated: channel-last z-scores of the crop (:func:`fill`).
        host_levels: place each tumour class at its real position in the host's display window and keep ``R``
            under the window's top (:func:`core.synthesis.levels.apply_host_levels`); False: the z-score fill as it
            is (before issue 36).
    """
    image = rg.denormalise(np.moveaxis(generated, -1, 0), plan.mean, plan.std, plan.floor)
    if host_levels and plan.window is not None:
        image = apply_host_levels(image, plan.labels, plan.crop_region, plan.window)
    crop_host = plan.box.apply(plan.image)
    crop_out = rg.composite(crop_host, image, plan.crop_region, plan.alpha)
    out = plan.image.copy()
    out[(Ellipsis, *plan.box.slices)] = crop_out[(Ellipsis, *plan.box.inner_slices)]
    return np.ascontiguousarray(plan.turn.to_source(out))


def render(plan: InsertionPlan, model: InsertionVAEGAN, z: Any, *, texture: float = 0.0,
           texture_seed: int = 0, calibrated: bool = True, host_levels: bool = True) -> np.ndarray:
    """The host image with ``R`` generated from latent ``z``, on the host's own grid (``(4, X, Y, Z)``):
    :func:`place` of :func:`fill` (see them for the arguments)."""
    generated = fill(plan, model, z, texture=texture, texture_seed=texture_seed, calibrated=calibrated)
    return place(plan, generated, host_levels=host_levels)


def _check_model(model: Any) -> InsertionVAEGAN:
    if not isinstance(model, InsertionVAEGAN):
        raise TypeError(f"expected a core.synthesis.vaegan.InsertionVAEGAN (load_insertion_model / "
                        f"build_insertion_model), got {type(model).__name__}")
    return model


def iter_insertions(host: Case, target: np.ndarray, model: InsertionVAEGAN, *, n_samples: int = 1, seed: int = 0,
                    temperature: float = 1.0, texture: float | None = None, host_tumour: np.ndarray | None = None,
                    unet: Any = None, margin: float = rg.MARGIN, progress: Progress | None = None,
                    name: str = "mask", host_levels: bool = True) -> Iterator[Case]:
    """Like :func:`insert_tumour`, but yields each case when it is made; inputs are checked before the first."""
    model = _check_model(model)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    texture = temperature if texture is None else texture
    if not (np.isfinite(texture) and texture >= 0):
        raise ValueError(f"texture must be a finite number >= 0, got {texture}")
    report = progress or (lambda fraction, message: None)
    report(0.0, "preparing the region")
    plan = plan_insertion(host, target, host_tumour=host_tumour, unet=unet, margin=margin, name=name)
    target = check_mask(target, name)
    return _samples(plan, model, host, target, n_samples, seed, temperature, texture, report, host_levels)


def _samples(plan: InsertionPlan, model: InsertionVAEGAN, host: Case, target: np.ndarray, n_samples: int,
             seed: int, temperature: float, texture: float, report: Progress, host_levels: bool) -> Iterator[Case]:
    for i in range(n_samples):
        report(0.1 + 0.9 * i / n_samples, f"generating sample {i + 1}/{n_samples}")
        z = model.sample_latent(plan.crop_shape, seed=sample_seed(seed, i), temperature=temperature)
        image = render(plan, model, z, texture=texture, texture_seed=sample_seed(seed, i), host_levels=host_levels)
        yield Case(image=image, affine=np.array(host.affine, copy=True), header=host.header.copy(),
                   seg=target.copy(), label_convention=host.label_convention, files={}, naming=None,
                   name=f"{host.name}-ins-s{seed}-{i:03d}")
    report(1.0, "done")


def insert_tumour(host: Case, target: np.ndarray, model: InsertionVAEGAN, *, n_samples: int = 1, seed: int = 0,
                  temperature: float = 1.0, texture: float | None = None, host_tumour: np.ndarray | None = None,
                  unet: Any = None, margin: float = rg.MARGIN, progress: Progress | None = None,
                  name: str = "mask", host_levels: bool = True) -> list[Case]:
    """Generate ``n_samples`` versions of ``host`` whose tumour is ``target``.

    Args:
        host: the real case (1 mm, any orientation) the tumour goes into.
        target: uint8 ``(X, Y, Z)`` internal labels 0..3 on the host's grid (all zero: remove the host's tumour).
        model: an :class:`InsertionVAEGAN`.
        n_samples: number of cases.
        seed: sample ``i`` uses latent seed ``core.synthesis.generate.sample_seed(seed, i)``: same seed, same cases.
        temperature: scale of the prior's standard deviation and of the host-matched scanner noise added inside
            ``R`` (:mod:`core.synthesis.texture`); 0: the mean fill, smooth and noise-free.
        texture: strength of that noise when it should differ from ``temperature`` (0: none).
        host_tumour: the host's tumour (non-zero); default ``host.seg``, else segmented with ``unet``.
        unet: U-Net used when the host's tumour is not given and it has no seg.
        margin: dilation (voxels) of target | host tumour that makes ``R``.
        progress: ``(fraction, message)`` callback.
        name: the target's file name, used in error messages.
        host_levels: tumour levels relative to the host's own display window, ``R`` kept under its top
            (:mod:`core.synthesis.levels`; False: the z-score fill as before issue 36).

    Returns:
        Cases named ``{host}-ins-s{seed}-{i:03d}`` with the host's affine and header and ``.seg = target``.

    Raises:
        CaseError: bad target, host or nothing to generate (see :func:`plan_insertion`).
        ValueError: ``n_samples < 1``, a negative temperature or texture.
    """
    return list(iter_insertions(host, target, model, n_samples=n_samples, seed=seed, temperature=temperature,
                                texture=texture, host_tumour=host_tumour, unet=unet, margin=margin,
                                progress=progress, name=name, host_levels=host_levels))
