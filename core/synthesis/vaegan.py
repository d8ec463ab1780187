"""Mask-conditioned VAE-GAN that paints a tumour (or healthy tissue) into a masked host crop, at 1 mm.

Generator ``G(context, condition, z)``: a small 3D U-Net whose input is the host crop with the region ``R``
blanked (``context``, 4 z-scored modalities) and the condition (one-hot NCR / ED / ET of the target, ``R``, the
brain; :func:`core.synthesis.region.condition`); a spatial latent ``z`` (``latent_channels`` at 1/8 resolution)
joins at the bottleneck and gives the diversity. Encoder ``q(z | x, condition)`` (training only: the posterior of
the true crop). Discriminator: a 3D patch discriminator over (image, condition) whose features also serve the
feature-matching (perceptual) loss; it is only needed for training and is not part of the shipped file.

Up-sampling in the generator is ``"nearest"`` (the first shipped file) or ``"linear"`` (:class:`LinearUpSampling3D`,
trilinear: 0.75 / 0.25 blends of neighbours, interleaved), and the discriminator can blur before each
stride-2 convolution (``antialias``, as in anti-aliased CNNs / StyleGAN): nearest up-sampling from the 1/8 latent
and a strided patch discriminator together leave an 8-voxel grid in the samples.

Fully convolutional: any crop whose sides are multiples of 8 works. Keras 3 layers and ``keras.ops`` only; the
adversarial training step lives in ``train.insertion``.
"""

from __future__ import annotations

from core.synthesis.cvae import GaussianSampler, kl_divergence
from core.synthesis.region import COND_CHANNELS, CONTEXT_CHANNELS

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

PACKAGE = "brats_studio"
IMAGE_CHANNELS = 4
DOWNSAMPLING = 8  # three stride-2 levels


UPSAMPLING = ("nearest", "linear")


def _along(x, axis: int, part: slice):
    """``x`` sliced by ``part`` on ``axis`` of a ``(B, X, Y, Z, C)`` tensor."""
    index = [slice(None)] * 5
    index[axis] = part
    return x[tuple(index)]


def _neighbours(x, axis: int):
    """``(x[i - 1], x[i + 1])`` along ``axis``, edges replicated (shapes kept)."""
    previous = ops.concatenate([_along(x, axis, slice(0, 1)), _along(x, axis, slice(None, -1))], axis=axis)
    following = ops.concatenate([_along(x, axis, slice(1, None)), _along(x, axis, slice(-1, None))], axis=axis)
    return previous, following


def blur3(x, axis: int):
    """``x`` smoothed along ``axis`` by ``[1, 2, 1] / 4`` with edge replication (shape kept)."""
    previous, following = _neighbours(x, axis)
    return 0.5 * x + 0.25 * (previous + following)


def blur3d(x):
    """``x`` smoothed by the separable ``[1, 2, 1] / 4`` kernel on the three spatial axes (shape kept)."""
    for axis in (1, 2, 3):
        x = blur3(x, axis)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class LinearUpSampling3D(layers.Layer):
    """2x trilinear up-sampling of ``(B, X, Y, Z, C)`` (half-pixel centres, edges replicated; no weights).

    Per axis, new voxels ``2i`` and ``2i + 1`` are ``0.75 * x[i] + 0.25 * x[i -/+ 1]`` (the linear interpolation
    at the new voxel centres), interleaved by a stack and a reshape: the same as repeating every voxel and
    smoothing by ``[1, 2, 1] / 4``, at half the cost.
    """

    def call(self, x):
        for axis in (1, 2, 3):
            previous, following = _neighbours(x, axis)
            pair = ops.stack([0.75 * x + 0.25 * previous, 0.75 * x + 0.25 * following], axis=axis + 1)
            shape = list(ops.shape(x))
            shape[axis] = shape[axis] * 2
            x = ops.reshape(pair, shape)
        return x

    def compute_output_shape(self, input_shape):
        b, *spatial, c = input_shape
        return (b, *(None if s is None else 2 * s for s in spatial), c)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Blur3D(layers.Layer):
    """Separable ``[1, 2, 1] / 4`` blur on the three spatial axes (anti-aliasing before a strided convolution)."""

    def call(self, x):
        return blur3d(x)


def _conv(x, filters: int, name: str, strides: int = 1, antialias: bool = False):
    if antialias and strides > 1:
        x = Blur3D(name=f"{name}_blur")(x)
    x = layers.Conv3D(filters, 3, strides=strides, padding="same", name=name)(x)
    return layers.LeakyReLU(0.2, name=f"{name}_act")(x)


def _upsample(x, mode: str, name: str):
    if mode not in UPSAMPLING:
        raise ValueError(f"upsampling must be one of {UPSAMPLING}, got {mode!r}")
    return LinearUpSampling3D(name=name)(x) if mode == "linear" else layers.UpSampling3D(2, name=name)(x)


def build_generator(base: int = 16, latent_channels: int = 4, upsampling: str = "nearest") -> keras.Model:
    """``G([context (B,X,Y,Z,4), condition (B,X,Y,Z,5), z (B,X/8,Y/8,Z/8,latent)]) -> z-scores (B,X,Y,Z,4)``."""
    context = keras.Input((None, None, None, CONTEXT_CHANNELS), name="context")
    cond = keras.Input((None, None, None, COND_CHANNELS), name="condition")
    z = keras.Input((None, None, None, latent_channels), name="z")
    e0 = _conv(layers.Concatenate(name="g_in")([context, cond]), base, "g_e0")
    e1 = _conv(_conv(e0, 2 * base, "g_d1", 2), 2 * base, "g_e1")
    e2 = _conv(_conv(e1, 4 * base, "g_d2", 2), 4 * base, "g_e2")
    b = _conv(e2, 4 * base, "g_d3", 2)
    b = _conv(layers.Concatenate(name="g_z")([b, z]), 4 * base, "g_b1")
    b = _conv(b, 4 * base, "g_b2")
    u = _conv(layers.Concatenate(name="g_c2")([_upsample(b, upsampling, "g_u2"), e2]), 4 * base, "g_r2")
    u = _conv(layers.Concatenate(name="g_c1")([_upsample(u, upsampling, "g_u1"), e1]), 2 * base, "g_r1")
    u = _conv(layers.Concatenate(name="g_c0")([_upsample(u, upsampling, "g_u0"), e0]), base, "g_r0")
    out = layers.Conv3D(IMAGE_CHANNELS, 1, name="g_out", dtype="float32")(u)
    return keras.Model([context, cond, z], out, name="generator")


def cast_generator(generator: keras.Model, policy: str) -> keras.Model:
    """A copy of ``generator`` whose layers compute in the Keras dtype ``policy`` (the output convolution stays
    float32), holding the same weights."""
    def clone(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        if layer.name != "g_out":
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(generator, clone_function=clone)
    copy.set_weights(generator.get_weights())
    return copy


def build_encoder(base: int = 16, latent_channels: int = 4) -> keras.Model:
    """``q([image (B,X,Y,Z,4), condition (B,X,Y,Z,5)]) -> (z_mean, z_log_var)`` at 1/8 resolution."""
    image = keras.Input((None, None, None, IMAGE_CHANNELS), name="image")
    cond = keras.Input((None, None, None, COND_CHANNELS), name="condition")
    x = _conv(layers.Concatenate(name="q_in")([image, cond]), base, "q_d1", 2)
    x = _conv(x, 2 * base, "q_d2", 2)
    x = _conv(_conv(x, 4 * base, "q_d3", 2), 4 * base, "q_e3")
    z_mean = layers.Conv3D(latent_channels, 1, name="q_mean", dtype="float32")(x)
    z_log_var = layers.Conv3D(latent_channels, 1, name="q_log_var", dtype="float32")(x)
    return keras.Model([image, cond], [z_mean, z_log_var], name="encoder")


def build_discriminator(base: int = 16, antialias: bool = False, full_res: bool = False) -> keras.Model:
    """Patch discriminator: ``[image, condition] -> [features at 1/2, 1/4, 1/8 ..., logits (B,X/8,Y/8,Z/8,1)]``.

    ``antialias`` blurs before each stride-2 convolution (:class:`Blur3D`; no extra weights): the blur removes the
    1-voxel texture from what the discriminator sees. ``full_res`` puts a stride-1 convolution (``base // 2``
    filters) in front, whose features at full resolution lead the list, so that fine texture is judged too.
    """
    image = keras.Input((None, None, None, IMAGE_CHANNELS), name="image")
    cond = keras.Input((None, None, None, COND_CHANNELS), name="condition")
    x = layers.Concatenate(name="d_in")([image, cond])
    features = []
    if full_res:
        x = _conv(x, max(base // 2, 1), "d_0")
        features.append(x)
    f1 = _conv(x, base, "d_1", 2, antialias)
    f2 = _conv(f1, 2 * base, "d_2", 2, antialias)
    f3 = _conv(f2, 4 * base, "d_3", 2, antialias)
    logits = layers.Conv3D(1, 3, padding="same", name="d_logits", dtype="float32")(f3)
    return keras.Model([image, cond], [*features, f1, f2, f3, logits], name="discriminator")


@keras.saving.register_keras_serializable(package=PACKAGE)
class InsertionVAEGAN(keras.Model):
    """Generator + encoder + sampler of the insertion model (the discriminator is kept by the trainer).

    Args:
        base_filters: filters at full resolution (x2, x4 at the coarser levels).
        latent_channels: channels of the spatial latent (1/8 resolution).
        seed: seed of the training-time sampler.
        upsampling: the generator's up-sampling, ``"nearest"`` (files saved before it was an option) or ``"linear"``.
    """

    def __init__(self, base_filters: int = 16, latent_channels: int = 4, seed: int = 0, upsampling: str = "nearest",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.base_filters = int(base_filters)
        self.latent_channels = int(latent_channels)
        self.seed = int(seed)
        self.upsampling = str(upsampling)
        self.generator = build_generator(self.base_filters, self.latent_channels, self.upsampling)
        self.encoder = build_encoder(self.base_filters, self.latent_channels)
        self.sampler = GaussianSampler(seed=self.seed, name="sampler", dtype="float32")
        self.built = True

    def call(self, inputs, training: bool = False):
        """``[image, context, condition] -> (generated z-scores, z_mean, z_log_var)`` (posterior sample)."""
        image, context, cond = inputs
        z_mean, z_log_var = self.encoder([image, cond], training=training)
        z = self.sampler(z_mean, z_log_var) if training else z_mean
        return self.generator([context, cond, z], training=training), z_mean, z_log_var

    def latent_shape(self, spatial: tuple[int, int, int]) -> tuple[int, int, int, int]:
        """Latent shape (channel-last) of a crop of ``spatial`` voxels (each a multiple of 8)."""
        if any(int(s) % DOWNSAMPLING for s in spatial):
            raise ValueError(f"crop {tuple(spatial)} must be a multiple of {DOWNSAMPLING} on every axis")
        return (*(int(s) // DOWNSAMPLING for s in spatial), self.latent_channels)

    def sample_latent(self, spatial: tuple[int, int, int], *, seed: int, temperature: float = 1.0):
        """One prior sample ``N(0, temperature**2 I)`` for a crop of ``spatial`` voxels, deterministic for ``seed``."""
        zeros = ops.zeros((1, *self.latent_shape(spatial)), "float32")
        return self.sampler(zeros, zeros, temperature=temperature, seed=seed)

    def generate(self, context, cond, z):
        """Generated z-scores ``(B, X, Y, Z, 4)`` (float32) for a masked context, a condition and latents (with the
        inference copy of the generator when :meth:`set_inference_precision` made one)."""
        as_tensor = ops.convert_to_tensor
        generator = getattr(self, "_inference_generator", None) or self.generator
        return generator([as_tensor(context, "float32"), as_tensor(cond, "float32"), as_tensor(z, "float32")],
                         training=False)

    def set_inference_precision(self, policy: str | None) -> None:
        """Make :meth:`generate` compute in ``policy`` (e.g. ``"mixed_bfloat16"``: 1.6x faster on a CPU with
        AVX512_BF16, samples within ~0.01 z-score) through a copy of the generator with the same weights; the
        model's own layers, weights, training and saved file stay float32. ``None`` or ``"float32"``: exact.
        The copy holds the weights of the moment: call it again after changing them."""
        copy = None if policy in (None, "float32") else cast_generator(self.generator, policy)
        object.__setattr__(self, "_inference_generator", copy)  # untracked: not a weight of the model

    def encode(self, image, cond):
        """``(z_mean, z_log_var)`` of the posterior of a true crop."""
        as_tensor = ops.convert_to_tensor
        return self.encoder([as_tensor(image, "float32"), as_tensor(cond, "float32")], training=False)

    def get_config(self) -> dict:
        return {**super().get_config(), "base_filters": self.base_filters,
                "latent_channels": self.latent_channels, "seed": self.seed, "upsampling": self.upsampling}


def build_insertion_model(base_filters: int = 16, latent_channels: int = 4, seed: int = 0,
                          upsampling: str = "nearest") -> InsertionVAEGAN:
    """An :class:`InsertionVAEGAN`, built (tiny configurations for tests: ``build_insertion_model(4, 2)``)."""
    return InsertionVAEGAN(base_filters=base_filters, latent_channels=latent_channels, seed=seed,
                           upsampling=upsampling, name="insertion_vaegan")


def kl_loss(z_mean, z_log_var):
    """``KL(q || N(0, I))`` summed over the latent elements (see :func:`core.synthesis.cvae.kl_divergence`)."""
    return kl_divergence(z_mean, z_log_var)
