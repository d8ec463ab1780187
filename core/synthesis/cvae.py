"""3D conditional variational auto-encoder for synthetic multi-modal brain MRI.

The model learns ``p(x | z, c)``: ``x`` are the four MRI modalities (z-scored inside the
brain, ``core.io.case.MODALITIES`` order) and ``c`` the condition, a one-hot tumour label map
(4 classes) plus the brain mask. The latent ``z`` is *spatial* (``latent_channels`` at
``1/2**depth`` of the model grid) so the generated anatomy follows the mask, and the
decoder gets skip connections from a condition branch at every scale.

The network works on a coarse "model grid": a fixed-size box centred on the brain,
average-pooled by ``factor`` (96x112x80 voxels of 2 mm by default). :class:`CvaeGrid`
maps volumes between a case grid and the model grid (exact inverse via ``CropBox``).

Speed on CPU (the project's target hardware): 3x3x3 convolutions run only at half model
resolution or coarser, as :class:`SliceConv3D` (2D convolutions over folded slices, whose
gradients TensorFlow's CPU kernels compute several times faster than those of ``Conv3D``);
2x2x2 down-sampling is space-to-depth + ``Dense`` (matrix products); up-sampling is fixed
linear interpolation + ``Dense`` (no checkerboard).

Written with Keras 3 layers and ``keras.ops`` only (like keras-io ``generative/vae.py``),
so it trains under TensorFlow or JAX: the loss lives in :meth:`ConditionalVAE.compute_loss`
and the KL warm-up counter is a non-trainable variable updated there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np  # noqa: E402

from core.io.labels import NUM_CLASSES  # noqa: E402
from core.preprocessing.preprocess import CropBox, bounding_box  # noqa: E402

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

PACKAGE = "brats_studio"
IMAGE_CHANNELS = 4
COND_CHANNELS = NUM_CLASSES + 1  # one-hot labels + brain mask (last channel)

# A 192x224x160 mm box holds every BraTS (SRI-24) brain with margin; 96x112x80 voxels at 2 mm.
BRATS_BOX_SIZE: tuple[int, int, int] = (192, 224, 160)

# Decoder z-scores are written as positive intensities: OFFSET + SCALE * z, at least FLOOR in the brain.
INTENSITY_OFFSET = 500.0
INTENSITY_SCALE = 150.0
INTENSITY_FLOOR = 1.0


# ----------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class CvaeGrid:
    """Mapping between a 1 mm case grid and the coarse model grid.

    The model sees a fixed-size box centred on the brain's bounding box (zero-padded where
    it leaves the case grid), average-pooled by ``factor``. Centring on the brain (instead of
    a fixed position in the BraTS grid) makes training on brain-cropped cases and sampling
    on any 1 mm grid that holds a brain of the usual size the same operation.

    Attributes:
        box_size: box size per axis in case voxels, a multiple of ``factor``.
        factor: down-sampling factor (a power of two; 2 -> 2 mm model voxels).
    """

    box_size: tuple[int, int, int] = BRATS_BOX_SIZE
    factor: int = 2

    def __post_init__(self) -> None:
        if self.factor < 1 or self.factor & (self.factor - 1):
            raise ValueError(f"factor must be a power of two, got {self.factor}")
        if len(self.box_size) != 3 or any(s < 1 or s % self.factor for s in self.box_size):
            raise ValueError(f"box size {self.box_size} must be 3 positive multiples of factor {self.factor}")

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Spatial shape of the model grid."""
        return tuple(s // self.factor for s in self.box_size)  # type: ignore[return-value]

    def box_for(self, brain: np.ndarray) -> CropBox:
        """The :class:`~core.preprocessing.preprocess.CropBox` of ``box_size`` centred on the brain's bounding box.

        A brain larger than the box loses its outermost voxels (they are 0 in generated images).
        """
        brain = np.asarray(brain, bool)
        bbox = bounding_box(brain) or tuple(slice(0, n) for n in brain.shape)
        start, stop, before, after = [], [], [], []
        for sl, size, n in zip(bbox, self.box_size, brain.shape):
            lo = (sl.start + sl.stop - size) // 2
            hi = lo + size
            start.append(max(lo, 0))
            stop.append(min(hi, n))
            before.append(max(-lo, 0))
            after.append(max(hi - n, 0))
        return CropBox(brain.shape, tuple(start), tuple(stop), tuple(before), tuple(after))

    def pool(self, volume: np.ndarray) -> np.ndarray:
        """Average-pool ``(C, *box_size)`` by ``factor`` to ``(C, *model_shape)``."""
        volume = np.asarray(volume, dtype=np.float32)
        if tuple(volume.shape[1:]) != tuple(self.box_size):
            raise ValueError(f"volume shape {volume.shape[1:]} is not the model's box size {self.box_size}")
        f = self.factor
        if f == 1:
            return volume
        c, (x, y, z) = volume.shape[0], self.model_shape
        return volume.reshape(c, x, f, y, f, z, f).mean(axis=(2, 4, 6), dtype=np.float32)

    def upsample(self, volume: np.ndarray) -> np.ndarray:
        """Linearly up-sample ``(C, *model_shape)`` by ``factor`` to ``(C, *box_size)``."""
        out = np.asarray(volume, dtype=np.float32)
        if tuple(out.shape[1:]) != tuple(self.model_shape):
            raise ValueError(f"volume shape {out.shape[1:]} is not the model grid {self.model_shape}")
        f = self.factor
        while f > 1:
            for axis in (1, 2, 3):
                out = upsample2_linear(out, axis)
            f //= 2
        return out

    def to_model(self, volume: np.ndarray, box: CropBox) -> np.ndarray:
        """Crop/pad ``(C, X, Y, Z)`` with ``box`` and average-pool it to ``(C, *model_shape)``."""
        return self.pool(box.apply(np.asarray(volume, dtype=np.float32)))

    def from_model(self, volume: np.ndarray, box: CropBox) -> np.ndarray:
        """Up-sample ``(C, *model_shape)`` and put it back on the case grid (0 outside the box)."""
        return box.invert(self.upsample(volume))


def upsample2_linear(a: np.ndarray, axis: int) -> np.ndarray:
    """Double ``a`` along ``axis`` by linear interpolation (cell-centred grids, edge-clamped).

    Written with in-place arithmetic on strided views: several times faster than
    ``scipy.ndimage.zoom(order=1)`` and than a version with temporaries.
    """
    a = np.asarray(a, dtype=np.float32)
    n = a.shape[axis]
    out = np.empty((*a.shape[: axis + 1], 2, *a.shape[axis + 1 :]), np.float32)

    def view(arr: np.ndarray, sl: slice, phase: int | None = None) -> np.ndarray:
        index: list = [slice(None)] * a.ndim
        index[axis] = sl
        if phase is not None:
            index.insert(axis + 1, phase)
        return arr[tuple(index)]

    quarter = np.float32(0.25)
    for phase in (0, 1):
        np.multiply(a, np.float32(0.75), out=view(out, slice(None), phase))
    # even samples lean on the previous voxel, odd ones on the next (edges: on themselves)
    view(out, slice(1, n), 0)[...] += quarter * view(a, slice(0, n - 1))
    view(out, slice(0, 1), 0)[...] += quarter * view(a, slice(0, 1))
    view(out, slice(0, n - 1), 1)[...] += quarter * view(a, slice(1, n))
    view(out, slice(n - 1, n), 1)[...] += quarter * view(a, slice(n - 1, n))
    return out.reshape(*a.shape[:axis], 2 * n, *a.shape[axis + 1 :])


def make_condition(labels: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Condition volume ``(5, X, Y, Z)``: one-hot internal labels 0..3, then the brain mask.

    The tumour is always part of the brain: the brain channel is ``brain | labels > 0``.
    """
    labels = np.asarray(labels)
    if labels.shape != np.shape(brain):
        raise ValueError(f"label map {labels.shape} and brain mask {np.shape(brain)} differ in shape")
    cond = np.empty((COND_CHANNELS, *labels.shape), np.float32)
    for k in range(NUM_CLASSES):
        np.equal(labels, k, out=cond[k], casting="unsafe")
    cond[NUM_CLASSES] = np.logical_or(brain, labels > 0)
    return cond


def model_inputs(
    grid: CvaeGrid, labels: np.ndarray, brain: np.ndarray, zscored: np.ndarray | None = None
) -> tuple[CropBox, np.ndarray, np.ndarray | None]:
    """Network inputs on the model grid for one case.

    Args:
        grid: the model's :class:`CvaeGrid`.
        labels: uint8 ``(X, Y, Z)`` internal labels 0..3.
        brain: bool ``(X, Y, Z)`` brain mask.
        zscored: optional float ``(4, X, Y, Z)`` image z-scored inside the brain (0 outside).

    Returns:
        ``(box, condition, image)``: the case-grid box, channel-last float32 condition
        ``(*model_shape, 5)`` and image ``(*model_shape, 4)`` (``None`` without ``zscored``).
    """
    labels = np.asarray(labels)
    brain = np.logical_or(brain, labels > 0)
    box = grid.box_for(brain)
    # crop first, then one-hot (padding is background): no full-grid 5-channel volume is built
    cond = grid.pool(make_condition(box.apply(labels), box.apply(brain)))
    image = None if zscored is None else grid.to_model(zscored, box)
    return (box, np.ascontiguousarray(np.moveaxis(cond, 0, -1)),
            None if image is None else np.ascontiguousarray(np.moveaxis(image, 0, -1)))


def to_intensity(zscores: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Map z-scores to a positive scale (about 0..1000): ``OFFSET + SCALE*z`` in the brain, 0 outside."""
    out = np.multiply(zscores, np.float32(INTENSITY_SCALE), dtype=np.float32)
    out += np.float32(INTENSITY_OFFSET)
    np.maximum(out, np.float32(INTENSITY_FLOOR), out=out)
    out *= np.asarray(brain, bool)
    return out


def decoded_to_case(grid: CvaeGrid, zscores: np.ndarray, box: CropBox, brain: np.ndarray) -> np.ndarray:
    """Decoder output ``(*model_shape, 4)`` -> float32 intensities ``(4, X, Y, Z)`` on the case grid.

    Up-sampled by ``grid.factor``, mapped by :func:`to_intensity` inside ``brain`` and pasted into
    the case grid (0 outside the box); all on box-sized arrays.
    """
    up = grid.upsample(np.moveaxis(np.asarray(zscores, np.float32), -1, 0))
    return box.invert(to_intensity(up, box.apply(brain)))


# ----------------------------------------------------------------------------- layers
@keras.saving.register_keras_serializable(package=PACKAGE)
class GaussianSampler(layers.Layer):
    """Reparameterised sample ``mean + temperature * exp(log_var / 2) * eps``.

    ``eps`` comes from ``keras.random.normal`` with the layer's ``SeedGenerator`` (training),
    or an explicit integer ``seed`` (deterministic sampling for generation).

    Args:
        seed: seed of the layer's ``SeedGenerator``.
    """

    def __init__(self, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, z_mean, z_log_var, temperature: float = 1.0, seed: int | None = None):
        eps = keras.random.normal(
            ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator if seed is None else seed
        )
        return z_mean + temperature * ops.exp(0.5 * z_log_var) * eps

    def get_config(self) -> dict:
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SliceConv3D(layers.Layer):
    """3D convolution ("same" padding, stride 1) computed as 2D convolutions over (Y, Z).

    Equal to ``keras.layers.Conv3D(filters, kernel_size, padding="same")`` (same kernel
    layout ``(k, k, k, in, out)``), but the X axis is folded into the batch: one 2D
    convolution produces the responses of all ``k`` X-taps, which are then summed with
    shifts along X. On CPUs the gradients of 2D convolutions are several times faster than
    those of 3D ones, which dominate 3D training time.

    Args:
        filters: output channels.
        kernel_size: odd cubic kernel size.
    """

    def __init__(self, filters: int, kernel_size: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)

    def build(self, input_shape) -> None:
        k = self.kernel_size
        self.kernel = self.add_weight(
            shape=(k, k, k, int(input_shape[-1]), self.filters), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros", name="bias")

    def call(self, x):
        k, f = self.kernel_size, self.filters
        c_in = self.kernel.shape[3]
        shape = ops.shape(x)
        nx, ny, nz = shape[1], shape[2], shape[3]
        # (kx, ky, kz, in, out) -> 2D kernel over (ky, kz) with the X-taps stacked as outputs.
        kernel = ops.reshape(ops.transpose(self.kernel, (1, 2, 3, 0, 4)), (k, k, c_in, k * f))
        y = ops.conv(ops.reshape(x, (-1, ny, nz, c_in)), kernel, padding="same")
        y = ops.reshape(y, (-1, nx, ny, nz, k, f))
        r = k // 2
        y = ops.pad(y, ((0, 0), (r, r), (0, 0), (0, 0), (0, 0), (0, 0)))
        out = y[:, 0:nx, :, :, 0, :]
        for tap in range(1, k):
            out = out + y[:, tap : tap + nx, :, :, tap, :]
        return out + self.bias

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SpaceToDepth3D(layers.Layer):
    """``(B, X, Y, Z, C) -> (B, X/2, Y/2, Z/2, 8C)``: each 2x2x2 block becomes one voxel.

    Followed by a ``Dense`` layer it equals a 2x2x2 stride-2 convolution, with matrix
    products instead of (slow on CPU) 3D convolution gradients.
    """

    def call(self, x):
        shape = ops.shape(x)
        nx, ny, nz, c = shape[1], shape[2], shape[3], shape[4]
        x = ops.reshape(x, (-1, nx // 2, 2, ny // 2, 2, nz // 2, 2, c))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
        return ops.reshape(x, (-1, nx // 2, ny // 2, nz // 2, 8 * c))

    def compute_output_shape(self, input_shape):
        half = [None if s is None else s // 2 for s in input_shape[1:4]]
        return (input_shape[0], *half, 8 * input_shape[4])


@keras.saving.register_keras_serializable(package=PACKAGE)
class LinearUpsample3D(layers.Layer):
    """Fixed 2x linear up-sampling of ``(B, X, Y, Z, C)`` (cell-centred, edge-clamped).

    The same interpolation as :func:`upsample2_linear`, in ``keras.ops``. The decoder
    up-samples with it ("resize-convolution"): learned 2x2x2 sub-pixel up-sampling
    (transposed convolution) left a checkerboard in the generated images.
    """

    def call(self, x):
        for axis in (1, 2, 3):
            n = ops.shape(x)[axis]
            first = ops.take(x, ops.convert_to_tensor([0]), axis=axis)
            last = ops.take(x, ops.reshape(n - 1, (1,)), axis=axis)
            prev = ops.concatenate([first, ops.take(x, ops.arange(0, n - 1), axis=axis)], axis=axis)
            nxt = ops.concatenate([ops.take(x, ops.arange(1, n), axis=axis), last], axis=axis)
            pair = ops.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=axis + 1)
            shape = ops.shape(x)
            new_shape = [shape[i] for i in range(5)]
            new_shape[axis] = 2 * n
            x = ops.reshape(pair, new_shape)
        return x

    def compute_output_shape(self, input_shape):
        double = [None if s is None else 2 * s for s in input_shape[1:4]]
        return (input_shape[0], *double, input_shape[4])


def down2(x, filters: int, name: str):
    """2x2x2 stride-2 convolution (space-to-depth + dense)."""
    x = SpaceToDepth3D(name=f"{name}_s2d")(x)
    return layers.Dense(filters, name=f"{name}_dense")(x)


def up2(x, filters: int, name: str):
    """1x1x1 projection to ``filters`` then 2x linear up-sampling (they commute: projecting first is cheaper)."""
    x = layers.Dense(filters, name=f"{name}_proj")(x)
    return LinearUpsample3D(name=f"{name}_linear")(x)


def conv_block(x, filters: int, name: str, *, down: bool = False):
    """(3x3x3 convolution | 2x2x2 stride-2 convolution if ``down``) -> LayerNorm over channels -> SiLU.

    Channel LayerNorm (as in ConvNeXt) instead of GroupNorm: Keras' GroupNormalization makes the
    training graph several times slower to build and its gradients cost more on CPU.
    """
    if down:
        x = down2(x, filters, f"{name}_conv")
    else:
        x = SliceConv3D(filters, 3, name=f"{name}_conv")(x)
    x = layers.LayerNormalization(axis=-1, name=f"{name}_norm")(x)
    return layers.Activation("silu", name=f"{name}_act")(x)


def down_path(x, base_filters: int, depth: int, max_filters: int, prefix: str) -> list:
    """Features at scales ``1/2 .. 1/2**depth`` of ``x`` (a 2x2x2 stride-2 down-sampling
    convolution, then a 3x3x3 convolution, per level).

    No 3x3x3 convolution runs at full model resolution: there they (and above all their
    gradients) would dominate the CPU time of a training step.
    """
    features = []
    for level in range(1, depth + 1):
        filters = _filters(base_filters, level - 1, max_filters)
        x = conv_block(x, filters, f"{prefix}{level}_down", down=True)
        x = conv_block(x, filters, f"{prefix}{level}")
        features.append(x)
    return features


def _filters(base: int, level: int, max_filters: int) -> int:
    return min(base * 2**level, max_filters)


def build_encoder(
    base_filters: int, latent_channels: int, depth: int, max_filters: int, name: str = "encoder"
) -> keras.Model:
    """``q(z | x, c)``: (image, condition) -> (z_mean, z_log_var) at ``1/2**depth`` resolution."""
    image = keras.Input((None, None, None, IMAGE_CHANNELS), name="image")
    cond = keras.Input((None, None, None, COND_CHANNELS), name="condition")
    x = layers.Concatenate(name="enc_in")([image, cond])
    x = down_path(x, base_filters, depth, max_filters, "enc")[-1]
    z_mean = layers.Dense(latent_channels, name="z_mean")(x)
    z_log_var = layers.Dense(latent_channels, kernel_initializer="zeros", name="z_log_var")(x)
    return keras.Model([image, cond], [z_mean, z_log_var], name=name)


def build_decoder(
    base_filters: int, latent_channels: int, depth: int, max_filters: int, name: str = "decoder"
) -> keras.Model:
    """``p(x | z, c)``: (latent, condition) -> z-scored image.

    A condition branch encodes ``c`` at every scale; the decoder up-samples the latent and
    concatenates the condition features of each scale (U-Net-like skips from ``c`` only, so
    all image information has to pass through ``z``). The half-resolution features are then
    linearly up-sampled, concatenated with the raw condition and mixed by 1x1x1 layers, so
    intensities follow the label edges at full model resolution.
    """
    latent = keras.Input((None, None, None, latent_channels), name="latent")
    cond = keras.Input((None, None, None, COND_CHANNELS), name="condition")
    skips = down_path(cond, base_filters, depth, max_filters, "cond")
    x = layers.Concatenate(name=f"dec{depth}_cat")([latent, skips[-1]])
    x = conv_block(x, _filters(base_filters, depth - 1, max_filters), f"dec{depth}")
    for level in range(depth - 1, 0, -1):
        filters = _filters(base_filters, level - 1, max_filters)
        x = up2(x, filters, f"dec{level}_up")
        x = layers.Concatenate(name=f"dec{level}_cat")([x, skips[level - 1]])
        x = conv_block(x, filters, f"dec{level}")
    x = up2(x, max(base_filters // 2, 1), "dec0_up")  # fewer channels at full resolution
    x = layers.Concatenate(name="dec0_cat")([x, cond])
    x = layers.Dense(base_filters, activation="silu", name="dec0_mix")(x)
    image = layers.Dense(IMAGE_CHANNELS, name="image_out")(x)
    return keras.Model([latent, cond], image, name=name)


# ----------------------------------------------------------------------------- model
@keras.saving.register_keras_serializable(package=PACKAGE)
class ConditionalVAE(keras.Model):
    """Conditional VAE: ``encoder`` q(z|x,c), ``decoder`` p(x|z,c), ``sampler``.

    Inputs are channel-last ``(image (B,X,Y,Z,4), condition (B,X,Y,Z,5))`` on the model grid.
    The training loss per brain voxel and channel is
    ``L1(x, x_hat) + beta_t * KL(q(z|x,c) || N(0, I)) / n_brain``, with ``beta_t`` warmed up
    linearly from 0 to ``beta`` over ``kl_warmup_steps`` training steps.

    Args:
        base_filters: filters at full model resolution (doubled per level up to ``max_filters``).
        latent_channels: channels of the spatial latent.
        depth: number of 2x down-samplings between the model grid and the latent.
        max_filters: cap on filters per level.
        beta: KL weight (the Laplace scale of the likelihood, in z-score units).
        kl_warmup_steps: steps of linear KL warm-up (0: none).
        box_size, factor: the :class:`CvaeGrid` of the model.
        seed: seed of the training-time sampler.
    """

    def __init__(
        self,
        base_filters: int = 16,
        latent_channels: int = 8,
        depth: int = 3,
        max_filters: int = 64,
        beta: float = 0.1,
        kl_warmup_steps: int = 1000,
        box_size: tuple[int, int, int] = BRATS_BOX_SIZE,
        factor: int = 2,
        seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.base_filters = int(base_filters)
        self.latent_channels = int(latent_channels)
        self.depth = int(depth)
        self.max_filters = int(max_filters)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.grid = CvaeGrid(tuple(int(s) for s in box_size), int(factor))
        if any(s % 2**self.depth for s in self.grid.model_shape):
            raise ValueError(
                f"model grid {self.grid.model_shape} must be divisible by 2**depth = {2**self.depth}"
            )
        self.seed = int(seed)
        args = (self.base_filters, self.latent_channels, self.depth, self.max_filters)
        self.encoder = build_encoder(*args)
        self.decoder = build_decoder(*args)
        self.sampler = GaussianSampler(seed=self.seed, name="sampler")
        self.train_steps = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False, name="train_steps"
        )
        self.rec_tracker = keras.metrics.Mean(name="rec")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.built = True

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """Shape of one latent sample, channel-last."""
        return (*(s // 2**self.depth for s in self.grid.model_shape), self.latent_channels)

    def call(self, inputs, training: bool = False):
        """Returns ``(reconstruction, z_mean, z_log_var)``; ``z`` is sampled only in training."""
        image, cond = inputs
        z_mean, z_log_var = self.encoder([image, cond], training=training)
        z = self.sampler(z_mean, z_log_var) if training else z_mean
        return self.decoder([z, cond], training=training), z_mean, z_log_var

    def kl_weight(self):
        """Current KL weight ``beta_t`` (after warm-up)."""
        if self.kl_warmup_steps <= 0:
            return ops.convert_to_tensor(self.beta, "float32")
        return self.beta * ops.minimum(1.0, self.train_steps / float(self.kl_warmup_steps))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        image, cond = x
        recon, z_mean, z_log_var = y_pred
        brain = cond[..., -1:]
        n_brain = ops.maximum(ops.sum(brain) * IMAGE_CHANNELS, 1.0)
        rec = ops.sum(ops.abs(image - recon) * brain) / n_brain
        kl = kl_divergence(z_mean, z_log_var) / n_brain
        if training:
            self.train_steps.assign_add(1.0)
        self.rec_tracker.update_state(rec)
        self.kl_tracker.update_state(kl)
        return rec + self.kl_weight() * kl

    def decode(self, z, cond):
        """Image z-scores ``(B, X, Y, Z, 4)`` for latents ``z`` and conditions ``cond``."""
        z, cond = ops.convert_to_tensor(z, "float32"), ops.convert_to_tensor(cond, "float32")
        return self.decoder([z, cond], training=False)

    def encode(self, image, cond):
        """``(z_mean, z_log_var)`` of the posterior."""
        image, cond = ops.convert_to_tensor(image, "float32"), ops.convert_to_tensor(cond, "float32")
        return self.encoder([image, cond], training=False)

    def sample_latent(self, batch: int, *, seed: int, temperature: float = 1.0):
        """``batch`` prior samples ``N(0, temperature**2 I)``, deterministic for ``seed``."""
        zeros = ops.zeros((batch, *self.latent_shape), "float32")
        return self.sampler(zeros, zeros, temperature=temperature, seed=seed)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "base_filters": self.base_filters,
            "latent_channels": self.latent_channels,
            "depth": self.depth,
            "max_filters": self.max_filters,
            "beta": self.beta,
            "kl_warmup_steps": self.kl_warmup_steps,
            "box_size": list(self.grid.box_size),
            "factor": self.grid.factor,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict) -> ConditionalVAE:
        config = dict(config)
        if "box_size" in config:
            config["box_size"] = tuple(config["box_size"])
        return cls(**config)


def kl_divergence(z_mean, z_log_var):
    """``KL(N(mean, exp(log_var)) || N(0, I))`` summed over all elements (>= 0)."""
    return ops.sum(-0.5 * (1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var)))


def build_cvae(
    base_filters: int = 16,
    latent_channels: int = 8,
    depth: int = 3,
    max_filters: int = 64,
    beta: float = 0.1,
    kl_warmup_steps: int = 1000,
    grid: CvaeGrid | None = None,
    seed: int = 0,
) -> ConditionalVAE:
    """Build a :class:`ConditionalVAE` (a 192x224x160 mm box at 2 mm unless ``grid`` is given).

    Tiny configurations for tests: e.g. ``build_cvae(4, 2, 2, grid=CvaeGrid((32, 32, 16), 2))``.
    """
    grid = grid or CvaeGrid()
    return ConditionalVAE(
        base_filters=base_filters,
        latent_channels=latent_channels,
        depth=depth,
        max_filters=max_filters,
        beta=beta,
        kl_warmup_steps=kl_warmup_steps,
        box_size=grid.box_size,
        factor=grid.factor,
        seed=seed,
        name="cvae",
    )
