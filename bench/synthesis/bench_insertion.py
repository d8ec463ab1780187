"""Fidelity, realism, diversity and speed of tumour insertion on the real validation cases (issue 13 targets).

    .venv/bin/python bench/synthesis/bench_insertion.py [--weights weights/insertion.keras] [--unet weights/unet.keras]
        [--json bench/results/synthesis/insertion.json] [--sheet docs/insertion_contact_sheet.png]
        [--card weights/insertion.json]

On each of the 6 validation hosts (``train/splits/brats-real-validation.txt``, never trained on):

* **Fidelity**: the tumour mask of a training case (at its own SRI-24 position, clipped to the host's brain) is
  inserted (seed 0); the shipped U-Net segments the result; Dice WT / TC / ET against that mask.
* **Realism, reconstruction of R**: the host's own labels are the target (R = its tumour, dilated), generated at
  temperature 0 without seeing R; SSIM / PSNR inside R per modality against the real host
  (``core.synthesis.region.region_ssim_psnr``: images scaled by the host's 0.5/99.5 brain percentiles, as the
  BraTS inpainting challenge does). **Healthy fill**: a training tumour's shape moved into healthy tissue of the
  host is R, with an empty target; the same scores (the inpainting challenge's task).
* **Real-vs-generated patch classifier**: 16^3 patches inside generated tumours vs inside real tumours; 20
  texture features per patch (per modality: mean, std, mean gradient magnitude, mean |Laplacian|, std of the
  high-pass residual, all in the host's healthy z-scores); logistic regression trained on insertions into the
  *training* cases, AUC on the validation hosts (0.5 = indistinguishable). The real patches are the host's own
  tumour, whose labels differ from the inserted one's, so a second, **label-matched** classifier compares each
  generated patch with the patch at the same place in the mask's donor (the same labels, a real scan): training
  rows from the same training insertions, test rows from a second insertion into each validation host of the next
  validation case's mask (validation donors only, so nothing the classifier was trained on is tested).
* **Diversity**: mean pairwise SSIM inside R of 3 samples of one mask (temperature 1).
* **Speed**: seconds per ``insert_tumour`` call for one sample, model loaded (median over the hosts): the first
  call per host (a new crop shape) and a second call (warm: the app's steady state, e.g. another seed).

It also draws the 1 mm contact sheet (host, three samples, the target mask) of the first validation host.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.io.case import MODALITIES, Case, load_case  # noqa: E402
from core.io.labels import CLASS_COLOURS, REGIONS  # noqa: E402
from core.preprocessing.preprocess import bounding_box, brain_mask  # noqa: E402
from core.segmentation.metrics import region_metrics  # noqa: E402
from core.synthesis import region as rg  # noqa: E402
from core.synthesis.insert import default_insertion_path, insert_tumour, load_insertion_model, plan_insertion  # noqa: E402,E501
from train.common import labelled_case_folders, read_case_ids  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "brats-real"
SPLIT = ROOT / "train" / "splits" / "brats-real-validation.txt"
PATCH = 16
SAMPLES_TEXTURE = ("samples (temperature 1) carry noise with the host's spectrum inside R (core.synthesis.texture, "
                   "since session 16), each tumour class at its own level relative to the host's healthy brain "
                   "(since session 17), after each tumour class is given its real 1-3 voxel band with patchy, "
                   "heavy-tailed noise (since session 18); temperature-0 fills (reconstruction, healthy fill) none. "
                   "Every fill has the generator's per-class intensity bias removed (core.synthesis.calibration, "
                   "since session 18)")
FEATURE_NAMES = [f"{m} {f}" for m in MODALITIES for f in ("mean", "std", "gradient", "|laplacian|", "high-pass std")]


def split() -> tuple[list[Path], list[Path]]:
    """(training folders, validation folders) of the real data."""
    val_ids = read_case_ids(str(SPLIT))
    train = labelled_case_folders(str(REAL), exclude=val_ids)
    val = [REAL / i for i in val_ids]
    return train, val


def training_hosts_setup(doc: str, default_json: Path,
                         more_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                         ) -> tuple[argparse.Namespace, object, list[Case]] | None:
    """Arguments (``--weights``, ``--hosts``, ``--json`` and what ``more_arguments`` adds), the insertion model and
    the first ``--hosts`` real *training* cases, for the benches that measure on training hosts only; ``None``
    without the real data."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_insertion_path())
    parser.add_argument("--hosts", type=int, default=12)
    parser.add_argument("--json", type=Path, default=default_json)
    if more_arguments is not None:
        more_arguments(parser)
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}")
        return None
    train_folders, _ = split()
    return args, load_insertion_model(args.weights), [load_case(f) for f in train_folders[: args.hosts]]


def next_case_insertions(cases: list[Case]) -> Iterator[tuple[int, Case, Case, np.ndarray, np.ndarray]]:
    """``(i, host, donor, host brain, target)``: each case as host of the next one's tumour (:func:`donor_mask`)."""
    for i, host in enumerate(cases):
        donor = cases[(i + 1) % len(cases)]
        brain = brain_mask(host.image)
        yield i, host, donor, brain, donor_mask(donor, brain)


def donor_mask(donor: Case, host_brain: np.ndarray) -> np.ndarray:
    """The donor's tumour labels at its own position, clipped to the host's brain."""
    return np.where(host_brain, donor.seg, 0).astype(np.uint8)


def healthy_region(host: Case, donor: Case, rng: np.random.Generator) -> np.ndarray:
    """A donor tumour's shape moved (shifted) into the host's healthy tissue, or an empty map if none fits."""
    brain = brain_mask(host.image)
    avoid = rg.dilate(host.seg > 0, 10) | ~ndimage.binary_erosion(brain, iterations=6)
    box = bounding_box(donor.seg > 0)
    shape = donor.seg[box] > 0
    candidates = np.argwhere(~avoid)
    for _ in range(200):
        corner = candidates[rng.integers(len(candidates))] - np.asarray(shape.shape) // 2
        if np.any(corner < 0) or np.any(corner + shape.shape > np.asarray(host.shape)):
            continue
        where = tuple(slice(int(c), int(c) + n) for c, n in zip(corner, shape.shape))
        if not (avoid[where] & shape).any():
            moved = np.zeros(host.shape, bool)
            moved[where] = shape
            return moved
    return np.zeros(host.shape, bool)


def patch_features(image: np.ndarray, brain: np.ndarray, region: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """20 texture features per patch centre (see the module docstring)."""
    mean, std = rg.healthy_stats(image, brain, region)
    h = PATCH // 2
    rows = []
    for c in centres:
        box = tuple(slice(int(x) - h, int(x) + h) for x in c)
        z = (image[(slice(None), *box)] - mean[:, None, None, None]) / std[:, None, None, None]
        feats = []
        for m in range(z.shape[0]):
            v = z[m].astype(np.float64)
            grad = np.sqrt(sum(g ** 2 for g in np.gradient(v)))
            feats += [v.mean(), v.std(), grad.mean(), np.abs(ndimage.laplace(v)).mean(),
                      (v - ndimage.gaussian_filter(v, 1.0)).std()]
        rows.append(feats)
    return np.asarray(rows)


def centres_in(mask: np.ndarray, rng: np.random.Generator, count: int = 20) -> np.ndarray:
    """Up to ``count`` random voxels of ``mask`` at least half a patch from the grid's faces."""
    h = PATCH // 2
    inner = np.zeros_like(mask)
    inner[h:-h, h:-h, h:-h] = mask[h:-h, h:-h, h:-h]
    idx = np.argwhere(inner)
    if not len(idx):
        return np.zeros((0, 3), int)
    return idx[rng.choice(len(idx), size=min(count, len(idx)), replace=False)]


def classifier_rows(host: Case, generated: Case, target: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (1 = generated) of patches in a generated tumour and in the host's real tumour."""
    brain = brain_mask(host.image)
    fake = patch_features(generated.image, brain, rg.dilate(target > 0, 4), centres_in(target > 0, rng))
    real = patch_features(host.image, brain, rg.dilate(host.seg > 0, 4), centres_in(host.seg > 0, rng))
    return np.vstack([fake, real]), np.r_[np.ones(len(fake)), np.zeros(len(real))]


def matched_rows(generated: Case, host_brain: np.ndarray, donor: Case, target: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels (1 = generated) of patches in a generated tumour and of the donor's real tumour at the
    same centres: the mask is the donor's own labels, so both sides have identical labels."""
    centres = centres_in(target > 0, rng)
    fake = patch_features(generated.image, host_brain, rg.dilate(target > 0, 4), centres)
    real = patch_features(donor.image, brain_mask(donor.image), rg.dilate(donor.seg > 0, 4), centres)
    return np.vstack([fake, real]), np.r_[np.ones(len(fake)), np.zeros(len(real))]


def fit_auc(x_train: list[np.ndarray], y_train: list[np.ndarray], x_test: list[np.ndarray],
            y_test: list[np.ndarray]) -> tuple[float, list[tuple[str, float]]]:
    """AUC on the test rows of a standardised logistic regression fitted on the training rows, and its six
    strongest features (coefficients on standardised features: what gives a generated patch away)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(np.vstack(x_train), np.concatenate(y_train))
    auc = roc_auc_score(np.concatenate(y_test), clf.predict_proba(np.vstack(x_test))[:, 1])
    telltales = sorted(zip(FEATURE_NAMES, clf[-1].coef_[0]), key=lambda kv: -abs(kv[1]))[:6]
    return float(auc), [(name, float(c)) for name, c in telltales]


def sheet(host: Case, samples: list[Case], target: np.ndarray, out: Path, size: int = 128, zoom: int = 2) -> None:
    """1 mm contact sheet: rows host / samples / target mask over the host; columns the four modalities (axial)."""
    from PIL import Image, ImageDraw

    z = int(np.argmax((target > 0).sum(axis=(0, 1))))
    cx, cy = (int(v) for v in np.argwhere(target[:, :, z] > 0).mean(axis=0))
    xs = slice(max(cx - size // 2, 0), max(cx - size // 2, 0) + size)
    ys = slice(max(cy - size // 2, 0), max(cy - size // 2, 0) + size)
    brain = brain_mask(host.image)
    windows = [np.percentile(host.image[m][brain], (0.5, 99.5)) for m in range(4)]

    def tile(volume: np.ndarray, m: int, labels: np.ndarray | None = None) -> Image.Image:
        lo, hi = windows[m]
        grey = np.clip((volume[xs, ys, z] - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        if labels is not None:
            for value, colour in CLASS_COLOURS.items():
                if value:
                    shown = labels[xs, ys, z] == value
                    rgb[shown] = (0.5 * rgb[shown] + 0.5 * np.array(colour)).astype(np.uint8)
        # BraTS LPS voxels: show radiological axial (rows = anterior->posterior)
        img = Image.fromarray(np.ascontiguousarray(np.rot90(rgb)[:, ::-1]))
        return img.resize((img.width * zoom, img.height * zoom), Image.Resampling.NEAREST)

    rows = [("host (real)", host.image, None)] + [(f"sample {i + 1}", s.image, None) for i, s in enumerate(samples)]
    rows.append(("target mask", host.image, target))
    w = size * zoom
    canvas = Image.new("RGB", (110 + 4 * w, 20 + len(rows) * w), "white")
    draw = ImageDraw.Draw(canvas)
    for m, name in enumerate(MODALITIES):
        draw.text((110 + m * w + 4, 4), name, fill="black")
    for r, (label, image, labels) in enumerate(rows):
        draw.text((4, 20 + r * w + w // 2), label, fill="black")
        for m in range(4):
            canvas.paste(tile(image[m], m, labels), (110 + m * w, 20 + r * w))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_insertion_path())
    parser.add_argument("--unet", type=Path, default=ROOT / "weights" / "unet.keras")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "synthesis" / "insertion.json")
    parser.add_argument("--sheet", type=Path, default=ROOT / "docs" / "insertion_contact_sheet.png")
    parser.add_argument("--card", type=Path, default=None, help="model card to add the validation numbers to")
    parser.add_argument("--train-hosts", type=int, default=6, help="training cases used for the classifier")
    parser.add_argument("--hosts", type=int, default=6, help="validation hosts scored (all 6 for the README)")
    parser.add_argument("--texture", type=float, default=None,
                        help="strength of the host-matched noise in samples (default: the temperature, 1; 0: none)")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}")
        return 1
    from core.segmentation.inference import load_model, load_model_card
    from core.segmentation.segment import segment_oriented

    model = load_insertion_model(args.weights)
    unet = load_model(args.unet)
    unet_card = load_model_card(args.unet) or {}
    train_folders, val_folders = split()
    rng = np.random.default_rng(0)
    rng_matched = np.random.default_rng(1)  # its own stream: the other rows and regions stay as in earlier runs
    donors = [load_case(f) for f in train_folders[: max(args.train_hosts, 2)]]
    lineage = [f"phase {p.get('phase')}: {p.get('steps')} steps" for p in unet_card.get("lineage", [])]
    result: dict = {"weights": str(args.weights), "unet": str(args.unet), "texture": args.texture,
                    "unet_card": {"step": unet_card.get("step"), "created": unet_card.get("created"),
                                  "lineage": lineage},
                    "hosts": {}}
    x_train, y_train, x_val, y_val, seconds, warm_seconds = [], [], [], [], [], []
    xm_train, ym_train, xm_val, ym_val = [], [], [], []
    for i, host in enumerate(donors[: args.train_hosts]):  # classifier training rows: insertions into training hosts
        donor = donors[(i + 1) % len(donors)]
        host_brain = brain_mask(host.image)
        target = donor_mask(donor, host_brain)
        generated = insert_tumour(host, target, model, seed=100 + i, texture=args.texture)[0]
        x, y = classifier_rows(host, generated, target, rng)
        x_train.append(x), y_train.append(y)
        x, y = matched_rows(generated, host_brain, donor, target, rng_matched)
        xm_train.append(x), ym_train.append(y)
        print(f"classifier training host {host.name}", flush=True)
    val_cases = [load_case(f) for f in val_folders[: args.hosts]]
    for i, host in enumerate(val_cases):
        brain = brain_mask(host.image)
        row: dict = {}
        donor = donors[i % len(donors)]
        target = donor_mask(donor, brain)
        start = time.perf_counter()
        samples = insert_tumour(host, target, model, n_samples=1, seed=0, texture=args.texture)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()  # model loaded and this crop's shape seen: the app's steady state
        insert_tumour(host, target, model, n_samples=1, seed=1, texture=args.texture)
        warm_seconds.append(time.perf_counter() - start)
        samples += insert_tumour(host, target, model, n_samples=3, seed=0, texture=args.texture)[1:]
        seg = segment_oriented(samples[0], unet).labels
        metrics = region_metrics(seg, target, host.spacing)
        row["donor"] = donor.name
        row["fidelity_dice"] = {r: round(float(metrics[r]["dice"]), 4) for r in REGIONS}
        region = plan_insertion(host, target).region_on_host()
        row["outside_R_changed_voxels"] = int(sum((s.image[:, ~region] != host.image[:, ~region]).sum()
                                                  for s in samples))
        row["diversity_pairwise_ssim"] = [round(v, 4) for v in rg.pairwise_ssim([s.image for s in samples],
                                                                                region, brain)]
        recon = insert_tumour(host, host.seg, model, temperature=0.0)[0]
        r_own = plan_insertion(host, host.seg).region_on_host()
        row["reconstruction_R"] = rg.region_ssim_psnr(host.image, recon.image, r_own, brain)
        fill_region = healthy_region(host, donor, rng)
        if fill_region.any():
            empty = np.zeros(host.shape, np.uint8)
            fill = insert_tumour(host, empty, model, temperature=0.0, host_tumour=fill_region)[0]
            r_fill = plan_insertion(host, empty, host_tumour=fill_region).region_on_host()
            row["healthy_fill_R"] = rg.region_ssim_psnr(host.image, fill.image, r_fill, brain)
        x, y = classifier_rows(host, samples[0], target, rng)
        x_val.append(x), y_val.append(y)
        val_donor = val_cases[(i + 1) % len(val_cases)]
        val_target = donor_mask(val_donor, brain)
        matched = insert_tumour(host, val_target, model, seed=200 + i, texture=args.texture)[0]
        x, y = matched_rows(matched, brain, val_donor, val_target, rng_matched)
        xm_val.append(x), ym_val.append(y)
        row["seconds_one_sample"] = round(seconds[-1], 2)
        row["seconds_one_sample_warm"] = round(warm_seconds[-1], 2)
        result["hosts"][host.name] = row
        print(host.name, json.dumps(row), flush=True)
        if i == 0:
            sheet(host, samples, target, args.sheet)
    auc, telltales = fit_auc(x_train, y_train, x_val, y_val)
    auc_matched, telltales_matched = fit_auc(xm_train, ym_train, xm_val, ym_val)
    hosts = result["hosts"].values()

    def mean_of(key: str, metric: str) -> list[float]:
        rows = [h[key][metric] for h in hosts if key in h]
        return [round(float(np.mean([r[m] for r in rows])), 4) for m in range(len(MODALITIES))]

    result["summary"] = {
        "fidelity_dice_mean": {r: round(float(np.mean([h["fidelity_dice"][r] for h in hosts])), 4) for r in REGIONS},
        "reconstruction_R_ssim": mean_of("reconstruction_R", "ssim"),
        "reconstruction_R_psnr": mean_of("reconstruction_R", "psnr"),
        "healthy_fill_R_ssim": mean_of("healthy_fill_R", "ssim"),
        "healthy_fill_R_psnr": mean_of("healthy_fill_R", "psnr"),
        "diversity_pairwise_ssim_mean": round(float(np.mean([v for h in hosts for v in h["diversity_pairwise_ssim"]])),
                                              4),
        "outside_R_changed_voxels": sum(h["outside_R_changed_voxels"] for h in hosts),
        "patch_classifier_auc": round(float(auc), 4),
        "patch_classifier": f"logistic regression on 20 texture features of {PATCH}^3 patches; trained on "
                            f"{len(x_train)} training hosts, tested on {len(x_val)} validation hosts",
        "patch_classifier_top_features": {name: round(float(c), 3) for name, c in telltales},
        "patch_classifier_auc_label_matched": round(auc_matched, 4),
        "patch_classifier_label_matched": "the same, real patches from the mask's donor at the same centres; test "
                                          "masks from the next validation case",
        "patch_classifier_label_matched_top_features": {name: round(c, 3) for name, c in telltales_matched},
        "seconds_per_sample_median": round(float(np.median(seconds)), 2),
        "seconds_per_sample_warm_median": round(float(np.median(warm_seconds)), 2),
        "modalities": list(MODALITIES),
    }
    print(json.dumps(result["summary"], indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.card is not None and args.card.is_file():
        card = json.loads(args.card.read_text())
        card["validation"] = {"cases": [f.name for f in val_folders], "unet": result["unet"],
                              "unet_card": result["unet_card"], **result["summary"],
                              "samples_texture": SAMPLES_TEXTURE}
        args.card.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.json} and {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
