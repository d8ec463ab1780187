"""3D U-Net for BraTS segmentation (Keras 3, backend-agnostic) and its Dice + cross-entropy loss.

Layout follows MONAI's ``basic_unet.py``: a stem ``ConvBlock`` (two conv-norm-LeakyReLU units),
``Down`` blocks (max-pool + ``ConvBlock``), ``Up`` blocks (transposed conv + skip concatenation +
``ConvBlock``) and a 1x1x1 head. Two heads exist:

* **classes** (``regions=False``): a softmax over the four internal classes (background, NCR, ED,
  ET; see ``core.io.labels``), trained with :func:`dice_ce_loss`;
* **regions** (``regions=True``, nnU-Net's BraTS setting): three sigmoids for the nested regions
  WT, TC, ET (:data:`REGION_CHANNELS`), trained with :func:`region_dice_bce_loss` (or its recall-weighted
  variant :func:`region_tversky_bce_loss`); the label map is
  derived from them (``core.segmentation.inference``), so the 0..3 label contract stays.

The blocks are small typed builders that wire *built-in* Keras layers into a functional model,
so a saved ``.keras`` file contains no custom layers and loads with ``safe_mode=True`` anywhere.
Only the loss is custom; it is registered for (de)serialisation and only needed to resume training.

Input is channel-last ``(B, X, Y, Z, 4)`` in ``core.io.case.MODALITIES`` order; every spatial size
must be a multiple of ``2 ** (depth - 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras  # noqa: E402
from keras import layers, ops

NORMS: tuple[str, ...] = ("instance", "group")
GROUP_NORM_GROUPS = 8  # groups for norm="group" (capped at the channel count)
NEGATIVE_SLOPE = 0.01  # LeakyReLU slope (nnU-Net default)
NORM_EPSILON = 1e-5


def _norm_layer(norm: str, channels: int, name: str) -> layers.Layer:
    """Instance norm (one group per channel) or group norm over ``channels``."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    groups = channels if norm == "instance" else min(GROUP_NORM_GROUPS, channels)
    return layers.GroupNormalization(groups=groups, epsilon=NORM_EPSILON, name=name)


@dataclass(frozen=True)
class ConvBlock:
    """Two (3x3x3 conv -> norm -> LeakyReLU) units (MONAI ``TwoConv``).

    Attributes:
        filters: output channels of both convolutions.
        norm: ``"instance"`` or ``"group"``.
        name: layer-name prefix.
    """

    filters: int
    norm: str
    name: str

    def __call__(self, x):
        for i in (1, 2):
            x = layers.Conv3D(self.filters, 3, padding="same", use_bias=False, name=f"{self.name}_conv{i}")(x)
            x = _norm_layer(self.norm, self.filters, f"{self.name}_norm{i}")(x)
            x = layers.LeakyReLU(negative_slope=NEGATIVE_SLOPE, name=f"{self.name}_act{i}")(x)
        return x


@dataclass(frozen=True)
class Down:
    """2x max-pool followed by a ``ConvBlock`` (MONAI ``Down``)."""

    filters: int
    norm: str
    name: str

    def __call__(self, x):
        x = layers.MaxPooling3D(pool_size=2, name=f"{self.name}_pool")(x)
        return ConvBlock(self.filters, self.norm, self.name)(x)


@dataclass(frozen=True)
class Up:
    """2x transposed-conv upsampling, concatenation with the skip, then a ``ConvBlock`` (MONAI ``UpCat``)."""

    filters: int
    norm: str
    name: str

    def __call__(self, x, skip):
        x = layers.Conv3DTranspose(self.filters, 2, strides=2, name=f"{self.name}_upconv")(x)
        x = layers.Concatenate(axis=-1, name=f"{self.name}_concat")([x, skip])
        return ConvBlock(self.filters, self.norm, self.name)(x)


def level_filters(base_filters: int, depth: int) -> list[int]:
    """Channels per resolution level: ``base * 2**level`` for ``level < depth``."""
    return [base_filters * 2**level for level in range(depth)]


REGION_CHANNELS: tuple[str, ...] = ("WT", "TC", "ET")  # output channels of a region-based U-Net


def build_unet(
    in_channels: int = 4,
    num_classes: int = 4,
    base_filters: int = 16,
    depth: int = 4,
    norm: str = "instance",
    name: str = "unet3d",
    regions: bool = False,
) -> keras.Model:
    """Build the 3D U-Net.

    Args:
        in_channels: input channels (4 MRI modalities).
        num_classes: output classes (4: background, NCR, ED, ET).
        base_filters: channels at full resolution; doubled at each level.
        depth: number of resolution levels (``depth - 1`` down-samplings); spatial sizes
            must be multiples of ``2 ** (depth - 1)``.
        norm: ``"instance"`` (GroupNormalization with groups = channels) or ``"group"``.
        name: model name.
        regions: three sigmoid outputs (WT, TC, ET; :data:`REGION_CHANNELS`) instead of the
            ``num_classes`` softmax.

    Returns:
        A functional ``keras.Model`` mapping ``(B, X, Y, Z, in_channels)`` to softmax
        probabilities ``(B, X, Y, Z, num_classes)``, or with ``regions`` to sigmoid region
        probabilities ``(B, X, Y, Z, 3)`` (float32 either way, also under a mixed precision policy).
    """
    if depth < 2:
        raise ValueError(f"depth must be >= 2, got {depth}")
    if base_filters < 1 or in_channels < 1 or num_classes < 2:
        raise ValueError("base_filters, in_channels must be >= 1 and num_classes >= 2")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    filters = level_filters(base_filters, depth)
    inputs = keras.Input(shape=(None, None, None, in_channels), name="image")
    x = ConvBlock(filters[0], norm, "enc0")(inputs)
    skips = [x]
    for level in range(1, depth):
        x = Down(filters[level], norm, f"enc{level}")(x)
        skips.append(x)
    for level in range(depth - 2, -1, -1):
        x = Up(filters[level], norm, f"dec{level}")(x, skips[level])
    if regions:
        logits = layers.Conv3D(len(REGION_CHANNELS), 1, name="region_head")(x)
        probs = layers.Activation("sigmoid", dtype="float32", name="sigmoid")(logits)
    else:
        logits = layers.Conv3D(num_classes, 1, name="head")(x)
        probs = layers.Softmax(axis=-1, dtype="float32", name="softmax")(logits)
    return keras.Model(inputs, probs, name=name)


def is_region_model(model: keras.Model) -> bool:
    """Whether ``model`` outputs the three region sigmoids (WT, TC, ET) rather than class softmax
    (an ensemble of U-Nets, ``train.ensemble``: whether its members do)."""
    return any(layer.name == "region_head" or (isinstance(layer, keras.Model) and is_region_model(layer))
               for layer in model.layers)


def size_multiple(model: keras.Model) -> int:
    """Multiple that every spatial input size of ``model`` must have (``2 ** number_of_poolings``).

    A model that wraps U-Nets (an output-averaging ensemble, ``train.ensemble``) needs the largest
    multiple of its members.
    """
    pools = sum(isinstance(layer, layers.MaxPooling3D) for layer in model.layers)
    nested = [size_multiple(layer) for layer in model.layers if isinstance(layer, keras.Model)]
    return max([2**pools, *nested])


# --------------------------------------------------------------------------------------------- loss
DICE_SMOOTH = 1e-5
# Tversky weights of false positives / false negatives (Salehi et al. 2017); 0.5 / 0.5 is the soft Dice
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7


def _batch_dice(target, y_pred):
    """Soft Dice per channel, pooled over the batch and space (nnU-Net "batch Dice"): shape ``(C,)``."""
    axes = (0, 1, 2, 3)
    intersection = ops.sum(target * y_pred, axis=axes)
    denominator = ops.sum(target, axis=axes) + ops.sum(y_pred, axis=axes)
    return (2.0 * intersection + DICE_SMOOTH) / (denominator + DICE_SMOOTH)


def _batch_tversky(target, y_pred, alpha: float, beta: float):
    """Soft Tversky index per channel, pooled like :func:`_batch_dice`: ``TP / (TP + alpha FP + beta FN)``."""
    axes = (0, 1, 2, 3)
    true_pos = ops.sum(target * y_pred, axis=axes)
    false_pos = ops.sum((1.0 - target) * y_pred, axis=axes)
    false_neg = ops.sum(target * (1.0 - y_pred), axis=axes)
    return (true_pos + DICE_SMOOTH) / (true_pos + alpha * false_pos + beta * false_neg + DICE_SMOOTH)


def _one_hot_targets(y_true, num_classes: int):
    """Integer labels ``(B,X,Y,Z)`` / ``(B,X,Y,Z,1)`` or one-hot ``(B,X,Y,Z,C)`` -> float one-hot."""
    if len(y_true.shape) == 5 and y_true.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(y_true, "float32")
    if len(y_true.shape) == 5:
        y_true = ops.squeeze(y_true, axis=-1)
    return ops.one_hot(ops.cast(y_true, "int32"), num_classes, dtype="float32")


@keras.saving.register_keras_serializable(package="brats_studio", name="soft_dice_loss")
def soft_dice_loss(y_true, y_pred):
    """Soft Dice loss over the foreground classes, pooled over the batch (nnU-Net "batch Dice").

    Args:
        y_true: integer labels ``(B, X, Y, Z)`` or ``(B, X, Y, Z, 1)``, or one-hot ``(B, X, Y, Z, C)``.
        y_pred: softmax probabilities ``(B, X, Y, Z, C)``.

    Returns:
        Scalar ``1 - mean_c Dice_c`` over classes ``1..C-1``.
    """
    y_pred = ops.cast(y_pred, "float32")
    num_classes = y_pred.shape[-1]
    target = _one_hot_targets(y_true, num_classes)
    dice = _batch_dice(target, y_pred)
    return 1.0 - ops.mean(dice[1:])


@keras.saving.register_keras_serializable(package="brats_studio", name="dice_ce_loss")
def dice_ce_loss(y_true, y_pred):
    """Soft Dice (foreground classes, batch-pooled) + categorical cross-entropy, equally weighted.

    Args:
        y_true: integer labels ``(B, X, Y, Z)`` or ``(B, X, Y, Z, 1)``, or one-hot ``(B, X, Y, Z, C)``.
        y_pred: softmax probabilities ``(B, X, Y, Z, C)``.

    Returns:
        Scalar loss (one value for the whole batch).
    """
    y_pred = ops.cast(y_pred, "float32")
    target = _one_hot_targets(y_true, y_pred.shape[-1])
    probs = ops.clip(y_pred, 1e-7, 1.0)
    cross_entropy = -ops.mean(ops.sum(target * ops.log(probs), axis=-1))
    return cross_entropy + soft_dice_loss(target, y_pred)


def _region_targets(y_true):
    """Integer internal labels ``(B,X,Y,Z)`` / ``(B,X,Y,Z,1)`` -> float region masks ``(B,X,Y,Z,3)`` (WT, TC, ET).

    Internal labels: 1 NCR, 2 ED, 3 ET; WT = {1,2,3}, TC = {1,3}, ET = {3}.
    """
    if len(y_true.shape) == 5:
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.cast(y_true, "int32")
    wt = labels > 0
    et = ops.equal(labels, 3)
    tc = ops.logical_or(ops.equal(labels, 1), et)
    return ops.cast(ops.stack([wt, tc, et], axis=-1), "float32")


def _binary_cross_entropy(target, y_pred):
    """Mean binary cross-entropy of sigmoid probabilities (clipped away from 0 and 1)."""
    probs = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
    return -ops.mean(target * ops.log(probs) + (1.0 - target) * ops.log(1.0 - probs))


@keras.saving.register_keras_serializable(package="brats_studio", name="region_dice_bce_loss")
def region_dice_bce_loss(y_true, y_pred):
    """Soft Dice (batch-pooled) + binary cross-entropy over the three region sigmoids (nnU-Net BraTS).

    Args:
        y_true: integer internal labels ``(B, X, Y, Z)`` or ``(B, X, Y, Z, 1)``.
        y_pred: sigmoid probabilities ``(B, X, Y, Z, 3)`` for WT, TC, ET.

    Returns:
        Scalar loss: ``mean BCE + 1 - mean_r Dice_r``.
    """
    y_pred = ops.cast(y_pred, "float32")
    target = _region_targets(y_true)
    return _binary_cross_entropy(target, y_pred) + 1.0 - ops.mean(_batch_dice(target, y_pred))


@keras.saving.register_keras_serializable(package="brats_studio", name="region_tversky_bce_loss")
def region_tversky_bce_loss(y_true, y_pred):
    """:func:`region_dice_bce_loss` with the soft Dice replaced by the Tversky index (``TVERSKY_ALPHA`` on false
    positives, ``TVERSKY_BETA`` on false negatives): missed tumour costs more than over-called tumour. Same arguments;
    returns ``mean BCE + 1 - mean_r Tversky_r``.
    """
    y_pred = ops.cast(y_pred, "float32")
    target = _region_targets(y_true)
    tversky = _batch_tversky(target, y_pred, TVERSKY_ALPHA, TVERSKY_BETA)
    return _binary_cross_entropy(target, y_pred) + 1.0 - ops.mean(tversky)
