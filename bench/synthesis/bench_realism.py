"""Issue 36 realism measures of both Generate modes on the held-out real hosts (the 9-case validation split).

    .venv/bin/python bench/synthesis/bench_realism.py [--label NAME] [--json bench/results/synthesis/realism.json]
        [--hosts 9] [--train-hosts 6] [--no-auc] [--no-cvae] [--no-insertion]
        [--sheet-before PNG] [--sheet-after PNG] [--sheet-cvae PNG]

**Into this case** (insertion VAE-GAN): on each validation host, the tumour labels of a training case at its own
position (clipped to the host's brain; donor ``i % train-hosts``) are inserted, seed 0, temperature 1. The generator
runs once per insertion and its fill is placed twice (``core.synthesis.insert.place``): **before** (the z-score
fill, as before issue 36: ``host_levels=False``) and **after** (the host-relative intensity model,
:mod:`core.synthesis.levels`), so the two compare on the same hosts, latents and noise. Measured per variant:

* ``flair_at_or_above_p995``: share of the inserted tumour's voxels (target > 0) whose FLAIR is at or above the
  host's own FLAIR 99.5th percentile over its brain (the top of the viewer's auto window). Target <= 2 %.
* ``highpass_ratio``: per modality, the mean square of the 1-voxel high-pass residual (``z - gaussian(z, 1)``, z in
  healthy-brain standard deviations of the image's own case) over the tumour voxels, generated (in the host) over
  real (the same voxels' labels in the donor, the case the mask came from). Target T2 and FLAIR within 1.5x.
  ``highpass_ratio_vs_healthy``: the same after dividing each side by its own healthy brain's energy (away from
  the tumour and the brain's outline): scanners differ in noise level, and this compares texture relative to it.
* ``outside_R_changed_voxels``: voxels outside R that differ from the host (exact). Target 0.
* ``seconds_per_sample``: plan + generator fill + placing, one sample, model loaded and the crop's shape traced
  (a warm-up insertion first: the app's steady state). Target <= 5 s.
* ``patch_auc`` / ``patch_auc_label_matched``: the patch classifier of ``bench/synthesis/bench_insertion.py``
  (trained on insertions into ``--train-hosts`` training cases, tested on these hosts). Target <= 0.70.

**New brain** (CVAE): each validation host's own label map is the condition, the host's brain the brain mask
(seed 0, temperature 1, 3 samples); ``highpass_ratio`` per modality inside the brain (eroded by ``EDGE`` voxels: the
outline against the background would dominate both), generated over the host's real scan (same definition, z over
the whole brain). Target within 2x. ``seconds_per_sample``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.synthesis.bench_insertion import REAL, classifier_rows, donor_mask, fit_auc, matched_rows, sheet, split  # noqa: E402
from core.io.case import MODALITIES, Case, load_case  # noqa: E402
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis import region as rg  # noqa: E402
from core.synthesis.generate import sample_seed  # noqa: E402
from core.synthesis.insert import (  # noqa: E402
    default_insertion_path,
    fill,
    insert_tumour,
    load_insertion_model,
    place,
    plan_insertion,
)
from core.synthesis.levels import WINDOW_PERCENTILES  # noqa: E402

SATURATION_PERCENTILE = WINDOW_PERCENTILES[1]  # the top of the viewer's auto window
EDGE = 3  # voxels: the CVAE's high-pass energy is measured this far inside the brain's outline


def saturated_share(host: Case, generated: Case, target: np.ndarray, brain: np.ndarray) -> float:
    """Share of ``target``'s tumour voxels whose generated FLAIR is at or above the host's FLAIR 99.5th percentile
    over its brain."""
    flair = MODALITIES.index("flair")
    ceiling = np.percentile(host.image[flair][brain], SATURATION_PERCENTILE)
    return float(np.mean(generated.image[flair][target > 0] >= ceiling))


def highpass_energy(image: np.ndarray, brain: np.ndarray, healthy: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per modality: mean square of ``z - gaussian(z, 1)`` over ``where``, z in ``healthy``'s mean / std units."""
    out = []
    for m in range(image.shape[0]):
        values = image[m].astype(np.float32)
        mean, std = float(values[healthy].mean()), max(float(values[healthy].std()), 1e-6)
        z = np.where(brain, (values - mean) / std, 0.0).astype(np.float32)
        residual = z - ndimage.gaussian_filter(z, 1.0)
        out.append(float(np.mean(residual[where] ** 2)))
    return np.asarray(out)


def tumour_highpass_ratio(generated: Case, host: Case, host_brain: np.ndarray, donor: Case, target: np.ndarray
                          ) -> tuple[list[float], list[float]]:
    """Generated / real high-pass energy inside the tumour, per modality (real: the donor's own tumour voxels), and
    the same with each side's energy first divided by that of its own healthy brain (away from the tumour and the
    brain's outline): scanners differ in noise level, so the second compares tumour texture relative to the scan."""
    inside = target > 0
    healthy = host_brain & ~rg.dilate(inside | (host.seg > 0), 4)
    gen = highpass_energy(generated.image, host_brain, healthy, inside)
    gen_healthy = highpass_energy(generated.image, host_brain, healthy,
                                  healthy & ndimage.binary_erosion(host_brain, iterations=EDGE))
    donor_brain = brain_mask(donor.image)
    donor_healthy = donor_brain & ~rg.dilate(donor.seg > 0, 4)
    real = highpass_energy(donor.image, donor_brain, donor_brain & (donor.seg == 0), inside & (donor.seg > 0))
    real_healthy = highpass_energy(donor.image, donor_brain, donor_brain & (donor.seg == 0),
                                   donor_healthy & ndimage.binary_erosion(donor_brain, iterations=EDGE))
    plain = [round(float(g / max(r, 1e-12)), 4) for g, r in zip(gen, real)]
    relative = [round(float((g / max(gh, 1e-12)) / max(r / max(rh, 1e-12), 1e-12)), 4)
                for g, gh, r, rh in zip(gen, gen_healthy, real, real_healthy)]
    return plain, relative


VARIANTS = {"before": False, "after": True}  # place(..., host_levels=): before / after issue 36's intensity model


def both_variants(host: Case, target: np.ndarray, model, seed: int) -> tuple[dict[str, Case], dict[str, float]]:
    """Sample 0 of ``insert_tumour(host, target, model, seed=seed)`` placed without and with the host-relative
    intensity model (the same plan, latent and noise: the generator runs once), and the seconds of each part."""
    t0 = time.perf_counter()
    plan = plan_insertion(host, target)
    t1 = time.perf_counter()
    z = model.sample_latent(plan.crop_shape, seed=sample_seed(seed, 0), temperature=1.0)
    crop = fill(plan, model, z, texture=1.0, texture_seed=sample_seed(seed, 0))
    t2 = time.perf_counter()
    cases, seconds = {}, {"plan": t1 - t0, "fill": t2 - t1}
    for name, on in VARIANTS.items():
        start = time.perf_counter()
        cases[name] = dataclasses.replace(host, image=place(plan, crop, host_levels=on), seg=target.copy())
        seconds[f"place_{name}"] = time.perf_counter() - start
    return cases, seconds


def insertion_measures(args: argparse.Namespace, train: list[Path], val: list[Path]) -> dict:
    """Every insertion number of the module docstring, per host and summarised, for both variants."""
    model = load_insertion_model(args.weights)
    donors = [load_case(f) for f in train[: max(args.train_hosts, 2)]]
    rng = {v: np.random.default_rng(0) for v in VARIANTS}  # per variant: the same patch centres in both
    rng_matched = {v: np.random.default_rng(1) for v in VARIANTS}
    rows_x: dict[str, dict[str, list]] = {v: {k: [] for k in ("xt", "yt", "xmt", "ymt", "xv", "yv", "xmv", "ymv")}
                                          for v in VARIANTS}
    if args.auc:
        for i, host in enumerate(donors[: args.train_hosts]):
            donor = donors[(i + 1) % len(donors)]
            brain = brain_mask(host.image)
            target = donor_mask(donor, brain)
            cases, _ = both_variants(host, target, model, seed=100 + i)
            for v, generated in cases.items():
                x, y = classifier_rows(host, generated, target, rng[v])
                rows_x[v]["xt"].append(x), rows_x[v]["yt"].append(y)
                x, y = matched_rows(generated, brain, donor, target, rng_matched[v])
                rows_x[v]["xmt"].append(x), rows_x[v]["ymt"].append(y)
            print(f"{time.strftime('%H:%M:%S')} classifier training host {host.name}", flush=True)
    hosts = [load_case(f) for f in val[: args.hosts]]
    rows: dict[str, dict[str, dict]] = {v: {} for v in VARIANTS}
    for i, host in enumerate(hosts):
        brain = brain_mask(host.image)
        donor = donors[i % len(donors)]
        target = donor_mask(donor, brain)
        both_variants(host, target, model, seed=1)  # warm-up: this crop's shape traced, as in the app
        cases, seconds = both_variants(host, target, model, seed=0)
        region = plan_insertion(host, target).region_on_host()
        matched = None
        if args.auc:
            val_donor = hosts[(i + 1) % len(hosts)]
            val_target = donor_mask(val_donor, brain)
            matched, _ = both_variants(host, val_target, model, seed=200 + i)
        for v, generated in cases.items():
            rows[v][host.name] = {
                "donor": donor.name,
                "tumour_voxels": int((target > 0).sum()),
                "flair_at_or_above_p995": round(saturated_share(host, generated, target, brain), 5),
                **dict(zip(("highpass_ratio", "highpass_ratio_vs_healthy"),
                           tumour_highpass_ratio(generated, host, brain, donor, target))),
                "outside_R_changed_voxels": int((generated.image[:, ~region] != host.image[:, ~region]).sum()),
                "seconds_per_sample": round(seconds["plan"] + seconds["fill"] + seconds[f"place_{v}"], 2),
                "seconds_parts": {k: round(t, 2) for k, t in seconds.items() if not k.startswith("place_")
                                  or k == f"place_{v}"},
            }
            if matched is not None:
                x, y = classifier_rows(host, generated, target, rng[v])
                rows_x[v]["xv"].append(x), rows_x[v]["yv"].append(y)
                x, y = matched_rows(matched[v], brain, val_donor, val_target, rng_matched[v])
                rows_x[v]["xmv"].append(x), rows_x[v]["ymv"].append(y)
            print(time.strftime('%H:%M:%S'), v, host.name, json.dumps(rows[v][host.name]), flush=True)
        if i == 0:
            for v, path in ((v, getattr(args, f"sheet_{v}")) for v in VARIANTS):
                if path is not None:
                    more = [insert_tumour(host, target, model, n_samples=3, seed=0, host_levels=VARIANTS[v])]
                    sheet(host, more[0], target, path)
    out = {}
    for v in VARIANTS:
        values = list(rows[v].values())
        ratio = np.asarray([r["highpass_ratio"] for r in values])
        summary = {
            "flair_at_or_above_p995_mean": round(float(np.mean([r["flair_at_or_above_p995"] for r in values])), 5),
            "flair_at_or_above_p995_max_host": round(float(max(r["flair_at_or_above_p995"] for r in values)), 5),
            "highpass_ratio_median": [round(float(x), 3) for x in np.median(ratio, axis=0)],
            "highpass_ratio_geomean": [round(float(x), 3) for x in np.exp(np.log(ratio).mean(axis=0))],
            "highpass_ratio_vs_healthy_median": [round(float(x), 3) for x in np.median(
                [r["highpass_ratio_vs_healthy"] for r in values], axis=0)],
            "outside_R_changed_voxels": sum(r["outside_R_changed_voxels"] for r in values),
            "seconds_per_sample_median": round(float(np.median([r["seconds_per_sample"] for r in values])), 2),
        }
        if args.auc:
            r = rows_x[v]
            auc, top = fit_auc(r["xt"], r["yt"], r["xv"], r["yv"])
            auc_m, top_m = fit_auc(r["xmt"], r["ymt"], r["xmv"], r["ymv"])
            summary |= {"patch_auc": round(auc, 4), "patch_auc_top_features": {k: round(c, 3) for k, c in top},
                        "patch_auc_label_matched": round(auc_m, 4),
                        "patch_auc_label_matched_top_features": {k: round(c, 3) for k, c in top_m}}
        out[v] = {"hosts": rows[v], "summary": summary}
    return out


def cvae_measures(args: argparse.Namespace, val: list[Path]) -> dict:
    """High-pass energy ratio per modality inside the brain and seconds per sample of CVAE new brains."""
    from core.synthesis.generate import default_cvae_path, generate_cases, load_cvae

    model = load_cvae(default_cvae_path())
    rows: dict[str, dict] = {}
    first: tuple[Case, list[Case]] | None = None
    for host in (load_case(f) for f in val[: args.hosts]):
        brain = brain_mask(host.image)
        generate_cases(host.seg, host.affine, host.header, model, n_samples=1, seed=1, brain=brain)  # warm-up
        start = time.perf_counter()
        samples = generate_cases(host.seg, host.affine, host.header, model, n_samples=3, seed=0, brain=brain)
        seconds = (time.perf_counter() - start) / len(samples)
        inner = ndimage.binary_erosion(brain, iterations=EDGE)  # the brain's outline is an edge in both: left out
        real = highpass_energy(host.image, brain, brain, inner)
        gen = [highpass_energy(s.image, brain, brain, inner) for s in samples]
        rows[host.name] = {"highpass_ratio": [round(float(np.mean([g[m] for g in gen]) / max(real[m], 1e-12)), 4)
                                              for m in range(len(MODALITIES))],
                           "seconds_per_sample": round(seconds, 2)}
        print("cvae", host.name, json.dumps(rows[host.name]), flush=True)
        first = first or (host, samples)
    if first is not None and args.sheet_cvae is not None:  # each row in its own window: CVAE scans use 0..1000
        from bench.synthesis.contact_sheet import contact_sheet

        rows_shown = [("host (real)", first[0])] + [(f"CVAE sample {i + 1}", s) for i, s in enumerate(first[1])]
        args.sheet_cvae.parent.mkdir(parents=True, exist_ok=True)
        contact_sheet(rows_shown, "axial").save(args.sheet_cvae)
    ratio = np.asarray([r["highpass_ratio"] for r in rows.values()])
    return {"hosts": rows, "summary": {
        "highpass_ratio_median": [round(float(v), 4) for v in np.median(ratio, axis=0)],
        "seconds_per_sample_median": round(float(np.median([r["seconds_per_sample"] for r in rows.values()])), 2)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_insertion_path())
    parser.add_argument("--label", default="run", help="name of this run in the JSON (e.g. before / after)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "synthesis" / "realism.json")
    parser.add_argument("--hosts", type=int, default=9, help="validation hosts (the 9-case split)")
    parser.add_argument("--train-hosts", type=int, default=6, help="training cases: donors and classifier rows")
    parser.add_argument("--no-auc", dest="auc", action="store_false", help="skip the patch classifier")
    parser.add_argument("--no-cvae", dest="cvae", action="store_false", help="skip the CVAE measures")
    parser.add_argument("--no-insertion", dest="insertion", action="store_false", help="skip the insertion measures")
    parser.add_argument("--sheet-before", type=Path, default=None, help="insertion contact sheet, before issue 36")
    parser.add_argument("--sheet-after", type=Path, default=None, help="insertion contact sheet, after")
    parser.add_argument("--sheet-cvae", type=Path, default=None, help="CVAE contact sheet to write")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}")
        return 1
    train, val = split()
    result: dict = {"hosts": [f.name for f in val[: args.hosts]]}
    if args.insertion:
        result["insertion"] = insertion_measures(args, train, val)
    if args.cvae:
        result["cvae"] = cvae_measures(args, val)
    print(json.dumps(result, indent=1)[:4000])
    runs = json.loads(args.json.read_text()) if args.json.is_file() else {}
    runs[args.label] = result
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(runs, indent=2) + "\n")
    print(f"wrote {args.json} [{args.label}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
