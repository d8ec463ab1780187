"""Train the tumour-insertion VAE-GAN (``core.synthesis``) on real cases: ``python -m train.insertion``.

Every training example is a 1 mm crop of a real training case (the host) with a region ``R`` to regenerate:

* **tumour** (paired): the host's own labels are the target, ``R`` = its tumour dilated; the truth is the host;
* **healthy fill** (paired): a tumour shape of *another* case, randomly flipped / rotated / scaled and moved to
  healthy tissue of the host, becomes ``R`` with an *empty* target; the truth is the host's healthy tissue;
* **foreign** (unpaired): a tumour of another case, moved / rotated / scaled, is the target (half of the time on
  top of the host's own tumour), ``R`` = target | host tumour, dilated; there is no truth, only the discriminator.

Losses of the generator: L1 inside ``R`` (paired; ``--mean-z-fraction`` of them decoded at z = 0, the
temperature-0 fill, instead of from the posterior) + feature matching on the discriminator's features (paired) +
least-squares adversarial loss over the patches that hold ``R`` + KL of the posterior (paired; unpaired
examples sample the prior) + a texture term on the high-pass inside ``R`` (paired; ``--hf-weight``, ``--hf-mode``
pixel / energy / distribution: :func:`texture_loss`). The discriminator sees (image, condition) of the real crop vs
the generated one.

    python -m train.insertion --data ../shared/data/brats-real --val-cases train/splits/brats-real-validation.txt \\
        --steps 2000 --out weights/insertion.keras --run-dir runs/insertion [--resume]

The validation cases are excluded from training (never read). The training step is written for the TensorFlow
backend (``tf.GradientTape``; the models themselves are Keras 3 layers). ``--resume`` continues from the run
folder's last checkpoint (generator and discriminator weights; the optimisers restart their moments).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from core.io.case import load_case
from core.preprocessing.preprocess import bounding_box, brain_mask
from core.synthesis import region as rg
from core.synthesis.insert import load_insertion_model
from core.synthesis.vaegan import UPSAMPLING, blur3d, build_discriminator, build_insertion_model, kl_loss
from train.common import command_line, labelled_case_folders, read_case_ids, save_atomic, write_json

import keras  # noqa: E402

KINDS = ("tumour", "healthy", "foreign")
HF_MODES = ("pixel", "energy", "distribution")


@dataclass
class InsertionConfig:
    """Settings of a training run (saved in the model card)."""

    data: str = "../shared/data/brats-real"
    val_cases: str = "train/splits/brats-real-validation.txt"
    steps: int = 2000
    batch: int = 1
    patch: int = 64
    base: int = 16
    latent: int = 4
    lr: float = 2e-4
    rec_weight: float = 1.0
    fm_weight: float = 1.0
    adv_weight: float = 0.1
    kl_weight: float = 0.01
    hf_weight: float = 0.0
    hf_mode: str = "pixel"
    mean_z_fraction: float = 0.0
    kind_probs: tuple[float, float, float] = (0.45, 0.3, 0.25)
    margin: float = rg.MARGIN
    precision: str = "mixed_bfloat16"
    upsampling: str = "nearest"
    disc_antialias: bool = False
    disc_full_res: bool = False
    seed: int = 0
    max_cases: int = 0
    ckpt_every: int = 200
    out: str = "weights/insertion.keras"
    run_dir: str = "runs/insertion"
    resume: bool = False
    init: str | None = None


# ------------------------------------------------------------------------------------------ data
@dataclass
class HostCase:
    """A training case cropped to its brain: z-scores (healthy statistics), labels and brain mask."""

    zscores: np.ndarray  # float16 (4, X, Y, Z)
    labels: np.ndarray  # uint8 (X, Y, Z)
    brain: np.ndarray  # bool (X, Y, Z)
    name: str


def host_case(folder: Path) -> HostCase:
    """Load a labelled case and crop it to the brain (8 voxels of margin), z-scored over its healthy brain."""
    case = load_case(folder)
    brain = brain_mask(case.image) | (case.seg > 0)
    box = bounding_box(brain)
    box = tuple(slice(max(s.start - 8, 0), min(s.stop + 8, n)) for s, n in zip(box, brain.shape))
    image, labels, brain = case.image[(slice(None), *box)], case.seg[box], brain[box]
    mean, std = rg.healthy_stats(image, brain, rg.dilate(labels > 0, rg.MARGIN))
    zscores = rg.normalise(image, brain, mean, std).astype(np.float16)
    return HostCase(zscores, labels.copy(), brain.copy(), case.name)


def tumour_shapes(hosts: Sequence[HostCase]) -> list[np.ndarray]:
    """Each host's tumour labels cropped to its bounding box (the library of target shapes)."""
    return [h.labels[bounding_box(h.labels > 0)].copy() for h in hosts if (h.labels > 0).any()]


def random_shape(shape: np.ndarray, rng: np.random.Generator, max_size: int) -> np.ndarray:
    """A tumour label crop flipped, rotated (any angle about each axis up to 30 degrees) and scaled (0.6-1.3)."""
    for axis in range(3):
        if rng.random() < 0.5:
            shape = np.flip(shape, axis)
    angles = np.deg2rad(rng.uniform(-30, 30, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    scale = rng.uniform(0.6, 1.3)
    scale = min(scale, 0.95 * max_size / (np.linalg.norm(shape.shape) + 1))
    size = int(np.ceil(np.linalg.norm(shape.shape) * scale)) + 2
    matrix = rot / scale  # output -> input coordinates
    centre_in, centre_out = (np.asarray(shape.shape) - 1) / 2, (np.full(3, size) - 1) / 2
    out = ndimage.affine_transform(np.ascontiguousarray(shape), matrix, offset=centre_in - matrix @ centre_out,
                                   output_shape=(size,) * 3, order=0)
    box = bounding_box(out > 0)
    return out[box] if box is not None else shape


def _crop(volume: np.ndarray, start: np.ndarray, size: int) -> np.ndarray:
    """``volume[..., start:start+size]`` per spatial axis, zero-padded where it leaves the volume."""
    spatial = volume.shape[-3:]
    out = np.zeros((*volume.shape[:-3], size, size, size), volume.dtype)
    src, dst = [], []
    for s, n in zip(start, spatial):
        lo, hi = max(int(s), 0), min(int(s) + size, n)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - int(s), lo - int(s) + max(hi - lo, 0)))
    out[(Ellipsis, *dst)] = volume[(Ellipsis, *src)]
    return out


def _paste(shape: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """A ``size``-cube label map with ``shape`` centred at ``centre`` (clipped at the cube's faces)."""
    out = np.zeros((size,) * 3, np.uint8)
    start = np.round(centre - np.asarray(shape.shape) / 2).astype(int)
    src, dst = [], []
    for s, n in zip(start, shape.shape):
        lo, hi = max(s, 0), min(s + n, size)
        src.append(slice(lo - s, hi - s))
        dst.append(slice(lo, hi))
    if all(d.stop > d.start for d in dst):
        out[tuple(dst)] = shape[tuple(src)]
    return out


def make_example(hosts: Sequence[HostCase], shapes: Sequence[np.ndarray], rng: np.random.Generator, size: int,
                 kind: str, margin: float = rg.MARGIN) -> dict[str, np.ndarray]:
    """One training example of ``kind`` (``KINDS``): image, context, condition, real condition, paired flag."""
    h = int(rng.integers(len(hosts)))
    host = hosts[h]
    tumour = np.flatnonzero(host.labels.ravel() > 0)
    if kind == "tumour" and tumour.size:
        centre = np.array(np.unravel_index(tumour[rng.integers(tumour.size)], host.labels.shape))
        centre = centre + rng.integers(-size // 6, size // 6 + 1, 3)
    else:
        brain = np.flatnonzero(host.brain.ravel())
        centre = np.array(np.unravel_index(brain[rng.integers(brain.size)], host.brain.shape))
        if kind == "foreign" and tumour.size and rng.random() < 0.5:  # on the host's tumour: replace it
            centre = np.array(np.unravel_index(tumour[rng.integers(tumour.size)], host.labels.shape))
    start = centre - size // 2
    image = _crop(host.zscores, start, size).astype(np.float32)
    labels, brain = _crop(host.labels, start, size), _crop(host.brain, start, size)
    if kind == "tumour" and tumour.size:
        target, host_tumour = labels, labels > 0
    else:
        shape = random_shape(shapes[int(rng.integers(len(shapes)))], rng, size - 8)
        placed = _paste(shape, np.full(3, size / 2) + rng.integers(-size // 8, size // 8 + 1, 3), size)
        placed[~rg.dilate(brain, 2)] = 0
        if kind == "healthy":
            placed[rg.dilate(labels > 0, margin + 2)] = 0  # healthy tissue only: R must not reach the tumour
            target, host_tumour = np.zeros_like(labels), placed > 0
        else:
            target, host_tumour = placed, labels > 0
    if rng.random() < 0.5:  # left-right mirror of the whole example
        image, labels, brain, target, host_tumour = (np.flip(a, -3) for a in (image, labels, brain, target,
                                                                               host_tumour))
    region = rg.insertion_region(target, host_tumour, brain, margin)
    cond = rg.condition(target, region, brain)
    real_cond = rg.condition(labels, region, brain)
    paired = float(kind != "foreign" and region.any())
    return {"image": np.ascontiguousarray(np.moveaxis(image, 0, -1)), "context": rg.masked_context(image, region),
            "cond": cond, "real_cond": real_cond, "paired": np.float32(paired)}


def example_stream(hosts: Sequence[HostCase], size: int, batch: int, seed: int,
                   probs: Sequence[float]) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches of examples (kinds drawn with ``probs``)."""
    rng = np.random.default_rng(seed)
    shapes = tumour_shapes(hosts)
    while True:
        items = [make_example(hosts, shapes, rng, size, KINDS[rng.choice(3, p=np.asarray(probs) / sum(probs))])
                 for _ in range(batch)]
        yield {k: np.stack([it[k] for it in items]) for k in items[0]}


def prefetch(stream: Iterator, depth: int = 4) -> Iterator:
    """Run ``stream`` in a background thread, ``depth`` items ahead (numpy/scipy release the GIL)."""
    q: queue.Queue = queue.Queue(depth)

    def fill() -> None:
        for item in stream:
            q.put(item)

    threading.Thread(target=fill, daemon=True).start()
    while True:
        yield q.get()


# ---------------------------------------------------------------------------------------- losses
def _masked_mean(values, weight):
    ops = keras.ops
    return ops.sum(values * weight) / ops.maximum(ops.sum(weight), 1.0)


def high_pass(x):
    """``x`` minus its separable ``[1, 2, 1] / 4`` blur: the voxel-scale texture (and any grid artefact)."""
    return x - blur3d(x)


def texture_energy(x, region):
    """Mean ``|high_pass(x)|`` inside ``region`` per example and channel, shape ``(batch, channels)``."""
    ops = keras.ops
    n = ops.maximum(ops.sum(region, axis=(1, 2, 3)), 1.0)
    return ops.sum(ops.abs(high_pass(x)) * region, axis=(1, 2, 3)) / n


def texture_distribution_gap(fake, image, weight):
    """1-D Wasserstein distance between the high-pass values of ``fake`` and ``image`` where ``weight`` is 1, per
    channel (mean over channels; the batch is pooled).

    Both are zeroed outside ``weight`` and sorted whole: the sorted difference of two mixtures with the same mass at 0
    is ``(1 - p)`` times the distance of the parts inside, so no dynamic-size gather is needed (``keras.ops`` only).
    """
    ops = keras.ops
    channels = ops.shape(fake)[-1]

    def sorted_values(x):
        x = ops.cast(high_pass(ops.cast(x, "float32")), "float32") * weight
        return ops.sort(ops.reshape(ops.moveaxis(x, -1, 0), (channels, -1)), axis=-1)

    inside = ops.maximum(ops.sum(weight), 1.0)
    return ops.sum(ops.abs(sorted_values(fake) - sorted_values(image))) / (inside * ops.cast(channels, "float32"))


def texture_loss(fake, image, region, pair, mode: str):
    """The generator's texture term on paired examples.

    ``pixel``: L1 between the high-pass of fake and truth voxel by voxel (pins the texture's phase, which a sampler
    cannot know: it pulls towards the mean texture). ``energy``: L1 between their texture *amplitudes* inside
    ``R`` per channel (phase-free, like a Gram/statistics loss), so fills are pushed to be as rough as the truth.
    ``distribution``: the 1-D Wasserstein distance between their high-pass *value distributions* inside ``R`` per
    channel (phase-free like ``energy``, and it also matches the tails: real tumour texture has 2-5x more voxels
    beyond 3 robust levels than the fills, at the same robust level; histogram loss, Risser et al. 2017).
    """
    ops = keras.ops
    if mode == "distribution":
        return texture_distribution_gap(fake, image, region * pair)
    if mode == "energy":
        pair_b = ops.reshape(pair, (-1, 1))
        gap = ops.abs(texture_energy(fake, region) - texture_energy(image, region)) * pair_b
        return ops.sum(gap) / ops.maximum(ops.sum(pair_b) * ops.cast(ops.shape(gap)[1], "float32"), 1.0)
    n_region = ops.maximum(ops.sum(region * pair) * 4.0, 1.0)
    return ops.sum(ops.abs(high_pass(fake) - high_pass(image)) * region * pair) / n_region


def patch_weight(region):
    """1 on the discriminator's patches (1/8 resolution) that hold any voxel of ``R``."""
    return keras.ops.cast(keras.ops.max_pool(region, 8, 8) > 0, "float32")


def make_train_step(model, disc, g_opt, d_opt, config: InsertionConfig):
    """The compiled GAN step: one generator and one discriminator update; returns the loss terms."""
    import tensorflow as tf

    ops = keras.ops
    g_vars = model.generator.trainable_variables + model.encoder.trainable_variables
    d_vars = disc.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(image, context, cond, real_cond, paired):
        region, brain = cond[..., 3:4], cond[..., 4:5]
        pair = ops.reshape(paired, (-1, 1, 1, 1, 1))
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            z_mean, z_log_var = model.encoder([image, cond], training=True)
            prior = keras.random.normal(ops.shape(z_mean))
            posterior = model.sampler(z_mean, z_log_var)
            # a share of the paired examples decode z = 0 (temperature 0): the fill from context alone
            use_posterior = pair * ops.cast(
                keras.random.uniform(ops.shape(pair)) >= config.mean_z_fraction, "float32")
            z = use_posterior * posterior + (1.0 - pair) * prior
            fake = model.generator([context, cond, z], training=True)
            comp = (context + fake * region) * brain
            *f_real, l_real = disc([image, real_cond], training=True)
            *f_fake, l_fake = disc([comp, cond], training=True)
            weight = patch_weight(region)
            rec = ops.sum(ops.abs(fake - image) * region * pair) / ops.maximum(ops.sum(region * pair) * 4.0, 1.0)
            fm = sum(ops.mean(ops.abs(ops.cast(a, "float32") - ops.cast(ops.stop_gradient(b), "float32"))
                              * pair) for a, b in zip(f_fake, f_real)) / len(f_fake)
            adv = _masked_mean(ops.square(l_fake - 1.0), weight)
            n_region = ops.maximum(ops.sum(region * pair) * 4.0, 1.0)
            kl = kl_loss(z_mean * pair, z_log_var * pair) / n_region
            hf = texture_loss(fake, image, region, pair, config.hf_mode)
            g_loss = (config.rec_weight * rec + config.fm_weight * fm + config.adv_weight * adv
                      + config.kl_weight * kl + config.hf_weight * hf)
            d_loss = _masked_mean(ops.square(l_real - 1.0), weight) + _masked_mean(ops.square(l_fake), weight)
        g_opt.apply_gradients(zip(g_tape.gradient(g_loss, g_vars), g_vars))
        d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars))
        return {"g": g_loss, "rec": rec, "fm": fm, "adv": adv, "kl": kl, "hf": hf, "d": d_loss}

    return step


# ------------------------------------------------------------------------------------------- run
def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    d = InsertionConfig()
    p = argparse.ArgumentParser(prog="python -m train.insertion", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=d.data, help="folder of labelled real case folders (default %(default)s)")
    p.add_argument("--val-cases", default=d.val_cases,
                   help="case ids never trained on (comma-separated or a file; default %(default)s)")
    for name in ("steps", "batch", "patch", "base", "latent", "seed", "max_cases", "ckpt_every"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "rec_weight", "fm_weight", "adv_weight", "kl_weight", "hf_weight", "margin"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--mean-z-fraction", type=float, default=d.mean_z_fraction,
                   help="share of paired examples decoded at z = 0 (temperature 0) instead of the posterior, so "
                        "that the temperature-0 fill is learnt from the context alone (default %(default)s)")
    p.add_argument("--hf-mode", choices=HF_MODES, default=d.hf_mode,
                   help="texture term (weight --hf-weight): voxel-wise high-pass L1, high-pass amplitude per "
                        "channel inside R, or the distance of the high-pass value distributions inside R "
                        "(default %(default)s)")
    p.add_argument("--kind-probs", type=float, nargs=3, default=d.kind_probs,
                   help="probabilities of tumour / healthy-fill / foreign examples (default %(default)s)")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default=d.precision)
    p.add_argument("--upsampling", choices=UPSAMPLING, default=d.upsampling,
                   help="generator up-sampling; 'linear' avoids the 8-voxel grid of 'nearest' (default %(default)s)")
    p.add_argument("--disc-antialias", action="store_true",
                   help="blur before the discriminator's strided convolutions")
    p.add_argument("--disc-full-res", action="store_true",
                   help="a stride-1 convolution in front of the discriminator, so that it also judges the 1-voxel "
                        "texture that --disc-antialias blurs away")
    p.add_argument("--out", default=d.out, help="exported model (default %(default)s); card beside it")
    p.add_argument("--run-dir", default=d.run_dir, help="checkpoints and state (default %(default)s)")
    p.add_argument("--init", default=None,
                   help="start the generator and encoder from this insertion model (.keras, same --base/--latent; "
                        "the up-sampling may differ: it has no weights); the discriminator starts fresh")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    return p


def _load_hosts(config: InsertionConfig) -> list[HostCase]:
    excluded = read_case_ids(config.val_cases) if config.val_cases else []
    folders = labelled_case_folders(config.data, exclude=excluded)
    if config.max_cases:
        folders = folders[: config.max_cases]
    from tqdm import tqdm

    return [host_case(f) for f in tqdm(folders, desc="load", unit="case", file=sys.stderr)]


def init_from(model, path: str | Path) -> None:
    """Copy the generator and encoder weights of the insertion model saved at ``path`` into ``model``.

    Raises:
        SystemExit: the file holds another architecture (base filters or latent channels).
    """
    source = load_insertion_model(path, precision=None)
    if [w.shape for w in source.weights] != [w.shape for w in model.weights]:
        raise SystemExit(f"error: --init {path}: base {source.base_filters}, latent {source.latent_channels} "
                         f"differ from this run's base {model.base_filters}, latent {model.latent_channels}")
    model.set_weights(source.get_weights())


def _restore(model, disc, run: Path) -> dict:
    state = json.loads((run / "state.json").read_text())
    model.load_weights(run / "generator.weights.h5")
    disc.load_weights(run / "discriminator.weights.h5")
    return state


def _checkpoint(model, disc, run: Path, state: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    for net, name in ((model, "generator"), (disc, "discriminator")):
        tmp = run / f".{name}.tmp.weights.h5"
        net.save_weights(tmp)
        tmp.replace(run / f"{name}.weights.h5")
    write_json(run / "state.json", state)


def train(config: InsertionConfig, command: str = "") -> dict:
    """Run (or resume) a training run; exports the model and its card; returns the card."""
    from tqdm import tqdm

    if config.precision != "float32":
        keras.mixed_precision.set_global_policy(config.precision)
    keras.utils.set_random_seed(config.seed)
    run = Path(config.run_dir)
    hosts = _load_hosts(config)
    model = build_insertion_model(config.base, config.latent, config.seed, config.upsampling)
    disc = build_discriminator(config.base, config.disc_antialias, config.disc_full_res)
    state = {"step": 0, "seconds": 0.0, "history": [], "command": command}
    if config.resume and (run / "state.json").is_file():
        state = _restore(model, disc, run)
    elif config.init:
        init_from(model, config.init)
    g_opt = keras.optimizers.Adam(config.lr, beta_1=0.5)
    d_opt = keras.optimizers.Adam(config.lr, beta_1=0.5)
    step_fn = make_train_step(model, disc, g_opt, d_opt, config)
    stream = prefetch(example_stream(hosts, config.patch, config.batch, config.seed + 7919 * state["step"],
                                     config.kind_probs))
    sums: dict[str, float] = {}
    start = time.time() - state["seconds"]
    with tqdm(total=config.steps, initial=state["step"], desc="train", unit="step", file=sys.stderr) as bar:
        while state["step"] < config.steps:
            batch = next(stream)
            losses = step_fn(batch["image"], batch["context"], batch["cond"], batch["real_cond"], batch["paired"])
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            state["step"] += 1
            bar.update(1)
            if state["step"] % 25 == 0:
                means = {k: round(v / 25, 4) for k, v in sums.items()}
                state["history"].append({"step": state["step"], **means})
                bar.set_postfix(means)
                sums = {}
            if state["step"] % config.ckpt_every == 0 or state["step"] == config.steps:
                state["seconds"] = time.time() - start
                _checkpoint(model, disc, run, state)
    return export(model, config, state, hosts)


def export(model, config: InsertionConfig, state: dict, hosts: Sequence[HostCase]) -> dict:
    """Save the shipped model (generator + encoder, float policy as trained) and its card."""
    out = Path(config.out)
    save_atomic(model, out)
    card = {
        "model": "core.synthesis.vaegan.InsertionVAEGAN (mask-conditioned VAE-GAN, 1 mm crops around R)",
        "parameters": int(model.count_params()),
        "training_cases": [h.name for h in hosts],
        "excluded_validation_cases": read_case_ids(config.val_cases) if config.val_cases else [],
        "steps": state["step"], "wall_time_s": round(state["seconds"], 1),
        "final_losses": state["history"][-1] if state["history"] else {},
        "loss_history_every_25_steps": state["history"],
        "config": asdict(config), "command": state.get("command", ""),
        "backend": keras.backend.backend(),
    }
    write_json(out.with_suffix(".json"), card)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return card


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    fields = InsertionConfig.__dataclass_fields__
    config = InsertionConfig(**{k: (tuple(v) if k == "kind_probs" else v) for k, v in vars(args).items()
                                if k in fields})
    train(config, command=command_line("train.insertion", argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
