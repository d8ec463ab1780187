"""Is one model better than another on the same cases, or is the difference noise? ``python -m train.compare``.

Usage::

    python -m train.compare BASELINE.json CANDIDATE.json [--metric dice] [--out comparison.json]
    # e.g. the shipped U-Net against a fine-tuned soup, both scored by train.evaluate on the validation split
    python -m train.compare bench/results/segmentation/unet_validation.json runs/X/val.json

Both files are ``python -m train.evaluate`` reports. Cases are paired by id (cases in only one report are listed
and left out). Per region (WT, TC, ET) and for the mean of the three regions the report gives both means, the mean
per-case difference (candidate - baseline), its 95 % paired bootstrap confidence interval (percentile method,
``scipy.stats.bootstrap``), the exact two-sided sign-flip permutation p-value (``scipy.stats.permutation_test``;
with n cases the smallest possible p is 2 / 2**n, so 0.031 for 6 cases) and how many cases got better / worse.
A difference is called real only when both agree (the interval excludes 0 and p < 0.05); otherwise it is reported as
within the case-to-case noise. The percentile bootstrap alone is too narrow for a handful of cases (with 6, it can
exclude 0 where five cases of six moved one way, p = 0.062), hence the exact test beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from core.io.labels import REGIONS

MEAN_OF_REGIONS = "mean"  # the row for the mean of WT, TC and ET per case
TIE = 1e-3  # per-case differences smaller than this count as neither better nor worse
RESAMPLES = 10_000
ALPHA = 0.05  # a difference is called real only when its CI excludes 0 and the sign-flip p is below this


def mean_ci(values: Sequence[float], *, confidence: float = 0.95, resamples: int = RESAMPLES,
            seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (cases resampled with replacement).

    Returns ``(value, value)`` for a single value or identical values (no spread to resample).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    if values.size == 1 or np.all(values == values[0]):
        return float(values[0]), float(values[0])
    result = stats.bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided p-value that the mean paired difference is 0 (sign-flip permutation test).

    Exact for up to 16 cases (all 2**n sign patterns); beyond that 2**16 random patterns (seed 0).
    """
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("no differences to test")
    if np.all(d == 0):
        return 1.0
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                    n_resamples=2**16, rng=np.random.default_rng(0))
    return float(result.pvalue)


def paired_cases(baseline: dict, candidate: dict) -> tuple[list[str], list[str]]:
    """``(ids in both reports in the baseline's order, ids in only one of them)``."""
    base_ids = [c["case"] for c in baseline["cases"]]
    cand_ids = {c["case"] for c in candidate["cases"]}
    both = [i for i in base_ids if i in cand_ids]
    only = sorted(set(base_ids) ^ cand_ids)
    return both, only


def _per_case(report: dict, ids: Sequence[str], metric: str) -> dict[str, np.ndarray]:
    by_id = {c["case"]: c for c in report["cases"]}
    rows = {r: np.array([by_id[i][r][metric] for i in ids], dtype=float) for r in REGIONS}
    rows[MEAN_OF_REGIONS] = np.mean([rows[r] for r in REGIONS], axis=0)
    return rows


def compare(baseline: dict, candidate: dict, *, metric: str = "dice", resamples: int = RESAMPLES) -> dict:
    """Paired comparison of two ``train.evaluate`` reports (see the module docstring).

    Raises:
        ValueError: the reports share no case, or ``metric`` is not in them.
    """
    ids, only = paired_cases(baseline, candidate)
    if not ids:
        raise ValueError("the two reports share no case id: compare reports of the same cases")
    try:
        base, cand = _per_case(baseline, ids, metric), _per_case(candidate, ids, metric)
    except KeyError as exc:
        raise ValueError(f"metric {metric!r} is not in both reports (train.evaluate writes dice, hd95, "
                         "lesion_dice, lesion_hd95)") from exc
    higher_is_better = "hd95" not in metric
    rows = {}
    for name in (*REGIONS, MEAN_OF_REGIONS):
        diff = cand[name] - base[name]
        low, high = mean_ci(diff, resamples=resamples)
        gain = diff if higher_is_better else -diff
        p_value = sign_flip_p(diff)
        noise = bool(low <= 0.0 <= high) or p_value >= ALPHA
        rows[name] = {
            "baseline": round(float(base[name].mean()), 4), "candidate": round(float(cand[name].mean()), 4),
            "difference": round(float(diff.mean()), 4), "ci95": [round(low, 4), round(high, 4)],
            "p_sign_flip": round(p_value, 4),
            "better": int(np.sum(gain > TIE)), "worse": int(np.sum(gain < -TIE)),
            "within_noise": noise,
            "favours": ("neither (within noise)" if noise
                        else "candidate" if (diff.mean() > 0) == higher_is_better else "baseline"),
            "per_case": {i: round(float(d), 4) for i, d in zip(ids, diff)},
        }
    return {"metric": metric, "cases": ids, "unpaired_cases": only, "regions": rows}


def format_comparison(result: dict) -> str:
    """Markdown table of :func:`compare`'s result."""
    lines = [f"{result['metric']} on {len(result['cases'])} paired cases (candidate - baseline; 95 % paired "
             "bootstrap CI; exact sign-flip p)",
             "| region | baseline | candidate | difference | 95 % CI | p | better / worse | favours |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in result["regions"].items():
        lines.append(f"| {name} | {row['baseline']:.3f} | {row['candidate']:.3f} | {row['difference']:+.3f} | "
                     f"{row['ci95'][0]:+.3f} .. {row['ci95'][1]:+.3f} | {row['p_sign_flip']:.3f} | "
                     f"{row['better']} / {row['worse']} | {row['favours']} |")
    if result["unpaired_cases"]:
        lines.append(f"left out (in one report only): {', '.join(result['unpaired_cases'])}")
    return "\n".join(lines)


def _load_report(path: Path) -> dict:
    """A ``train.evaluate`` report; ``ValueError`` naming the file and the fix otherwise."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({exc}); pass a JSON report of python -m train.evaluate") from None
    if not isinstance(report, dict) or not isinstance(report.get("cases"), list):
        raise ValueError(f"{path} has no 'cases' list; pass a JSON report of python -m train.evaluate")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m train.compare", description=__doc__.split("\n")[0])
    parser.add_argument("baseline", type=Path, help="train.evaluate report of the reference model")
    parser.add_argument("candidate", type=Path, help="train.evaluate report of the model to judge")
    parser.add_argument("--metric", default="dice", choices=("dice", "hd95", "lesion_dice", "lesion_hd95"))
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    args = parser.parse_args(argv)
    try:
        result = compare(_load_report(args.baseline), _load_report(args.candidate), metric=args.metric,
                         resamples=args.resamples)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.update({"baseline": str(args.baseline), "candidate": str(args.candidate)})
    print(format_comparison(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
