"""train.compare: paired comparison of two train.evaluate reports (bootstrap CI + exact sign-flip test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from train.compare import compare, main, mean_ci, sign_flip_p


def _report(dice_by_case: dict[str, tuple[float, float, float]], hd95: float = 5.0) -> dict:
    """A train.evaluate-shaped report: WT / TC / ET Dice per case, one HD95 for every region."""
    return {"cases": [{"case": case, **{r: {"dice": d, "hd95": hd95 + i} for r, d in zip(("WT", "TC", "ET"), dice)}}
                      for i, (case, dice) in enumerate(dice_by_case.items())]}


BASE = {f"c{i}": (0.80 + 0.02 * i, 0.70 + 0.01 * i, 0.60 - 0.01 * i) for i in range(6)}


def test_mean_ci_brackets_the_mean_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.8, 0.1, 6), rng.normal(0.8, 0.1, 60)
    low, high = mean_ci(few)
    assert low < few.mean() < high and few.min() <= low and high <= few.max()
    assert np.subtract(*mean_ci(many)[::-1]) < high - low
    assert mean_ci([0.7, 0.7, 0.7]) == (0.7, 0.7)
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_sign_flip_p_is_exact_for_a_handful_of_cases() -> None:
    assert sign_flip_p([0.01] * 6) == pytest.approx(2 / 64)  # every case one way: the smallest p of 6 cases
    assert sign_flip_p([0.01, 0.02, -0.015, 0.005, -0.01, 0.0]) > 0.5
    assert sign_flip_p([0.0, 0.0]) == 1.0


def test_compare_pairs_cases_by_id_and_calls_a_consistent_gain_real() -> None:
    better = {case: (wt + 0.03, tc + 0.02 + 0.001 * i, et + 0.01) for i, (case, (wt, tc, et)) in
              enumerate(reversed(list(BASE.items())))}  # other order than the baseline's
    better["extra"] = (0.9, 0.9, 0.9)
    result = compare(_report(BASE), _report(better))
    assert result["cases"] == list(BASE) and result["unpaired_cases"] == ["extra"]
    wt = result["regions"]["WT"]
    assert wt["difference"] == pytest.approx(0.03) and wt["better"] == 6 and wt["worse"] == 0
    assert not wt["within_noise"] and wt["favours"] == "candidate"
    assert wt["p_sign_flip"] == pytest.approx(2 / 64, abs=1e-4)
    assert result["regions"]["mean"]["difference"] == pytest.approx((0.03 + 0.0225 + 0.01) / 3, abs=1e-4)
    assert result["regions"]["TC"]["per_case"]["c5"] == pytest.approx(0.02)


def test_compare_calls_mixed_differences_noise() -> None:
    mixed = {case: (wt + (0.03 if i % 2 else -0.02), tc, et) for i, (case, (wt, tc, et)) in enumerate(BASE.items())}
    row = compare(_report(BASE), _report(mixed))["regions"]["WT"]
    assert row["within_noise"] and row["favours"] == "neither (within noise)"
    assert row["better"] == 3 and row["worse"] == 3 and row["ci95"][0] < 0 < row["ci95"][1]


def test_compare_knows_lower_hd95_is_better() -> None:
    result = compare(_report(BASE, hd95=8.0), _report(BASE, hd95=5.0), metric="hd95")
    row = result["regions"]["ET"]
    assert row["difference"] == pytest.approx(-3.0) and row["better"] == 6 and row["favours"] == "candidate"


def test_compare_rejects_reports_of_other_cases_or_metrics() -> None:
    with pytest.raises(ValueError, match="share no case"):
        compare(_report(BASE), _report({"other": (0.5, 0.5, 0.5)}))
    with pytest.raises(ValueError, match="lesion_dice"):
        compare(_report(BASE), _report(BASE), metric="lesion_dice")


def test_main_prints_the_table_writes_json_and_names_a_bad_file(tmp_path: Path, capsys) -> None:
    base, cand, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "cmp.json"
    base.write_text(json.dumps(_report(BASE)))
    cand.write_text(json.dumps(_report({c: (wt - 0.05, tc, et) for c, (wt, tc, et) in BASE.items()})))
    assert main([str(base), str(cand), "--out", str(out)]) == 0
    assert "| WT | 0.850 | 0.800 | -0.050 |" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["regions"]["WT"]["favours"] == "baseline" and saved["baseline"] == str(base)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(base), str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err
    bad.write_text(json.dumps({"mean": 1}))
    assert main([str(base), str(bad)]) == 2
    assert "no 'cases' list" in capsys.readouterr().err
