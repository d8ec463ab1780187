"""Validation Dice per CPU-hour of side-by-side U-Net training runs (``probe_unet.sh`` beside this file).

Trial scaffolding of sessions 11 and 12 (``train/probe_report.py`` until issue 39), kept with the experiments log
(``docs/experiments/README.md``); run it from the project root.

Each run folder holds ``train.unet``'s ``state.json`` (validation history with wall times) and ``time.json``
(``/usr/bin/time``: the run's CPU seconds, its case-producer child included). CPU-hours at a validation step are
the run's total CPU time scaled by that step's share of the run's steps, so arms that shared the machine are
compared by the compute each one used, not by the wall clock (an estimate: every step is taken to cost the same CPU,
which holds for one architecture and patch size; a share of the *wall* time would not, since an arm runs faster
once the others have finished).

    python docs/experiments/scripts/probe_report.py runs/probe/init16 runs/probe/scratch16 \
        --json docs/experiments/results/unet_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from core.io.labels import REGIONS  # noqa: E402


def run_report(run_dir: Path) -> dict:
    """One run's validation curve against CPU-hours, and its best step.

    Raises:
        FileNotFoundError: the folder has no ``state.json`` (not a ``train.unet`` run folder).
    """
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: no train.unet state here; pass run folders of probe_unet.sh")
    state = json.loads(state_path.read_text())
    history = [h for h in state.get("history", []) if "val_mean_dice" in h]
    timing_path = run_dir / "time.json"
    text = timing_path.read_text().strip() if timing_path.is_file() else ""
    timing = json.loads(text) if text else None  # /usr/bin/time writes it when the run ends: empty until then
    cpu_total = (float(timing["cpu_user_s"]) + float(timing["cpu_system_s"])) if timing else None
    steps_done = int(state.get("step") or 0)
    curve = []
    for h in history:
        share = h["step"] / steps_done if steps_done > 0 else float("nan")
        cpu_h = None if cpu_total is None else round(cpu_total * share / 3600.0, 3)
        curve.append({"step": h["step"], "wall_h": round(h["wall_time_s"] / 3600.0, 3), "cpu_h": cpu_h,
                      "median_step_s": h.get("median_step_s"),
                      "val_dice": {r: round(float(h["val_dice"][r]), 4) for r in REGIONS},
                      "val_mean_dice": round(float(h["val_mean_dice"]), 4)})
    best = max(curve, key=lambda c: c["val_mean_dice"], default=None)
    card = {}
    card_path = run_dir / "unet.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text())
    config = card.get("config", {})
    return {"run": str(run_dir), "command": state.get("command"), "steps_done": state.get("step"),
            "base": config.get("base"), "depth": config.get("depth"), "patch": config.get("patch"),
            "params": card.get("params"), "init": config.get("init"), "lr": config.get("lr"),
            "cpu_s_total": cpu_total, "max_rss_gb": round(timing["max_rss_kb"] / 2**20, 2) if timing else None,
            "curve": curve, "best": best,
            "best_mean_dice_per_cpu_h": (round(best["val_mean_dice"] / best["cpu_h"], 4)
                                         if best and best["cpu_h"] else None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of probe_unet.sh")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    try:
        report = {"runs": {p.name: run_report(p) for p in args.runs}}
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, r in report["runs"].items():
        print(f"{name}: base {r['base']} depth {r['depth']} patch {r['patch']} ({r['params']} parameters) "
              f"init {r['init']}")
        for c in r["curve"]:
            dice = " / ".join(f"{c['val_dice'][k]:.3f}" for k in REGIONS)
            print(f"  step {c['step']:5d}  {c['cpu_h'] if c['cpu_h'] is not None else '?':>6} CPU-h  "
                  f"{c['median_step_s']} s/step  WT/TC/ET {dice}  mean {c['val_mean_dice']:.3f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
