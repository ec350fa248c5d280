"""`digitlab calibrate`: (re)fit a run's temperature on its validation hold-out; and eval's calibration figures."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from digitlab.calibration import Calibration


def cmd_calibrate(args: argparse.Namespace) -> int:
    from digitlab.calibrate import CHECKPOINTS, calibrate_run, summary
    from digitlab.predict import DEFAULT_WEIGHTS

    checkpoints = CHECKPOINTS if args.checkpoint == "both" else (args.checkpoint,)
    done = calibrate_run(args.run, checkpoints, args.val_size, args.data_dir)
    if args.json:
        print(json.dumps([{"file": str(d.path), **d.calibration.to_meta()} for d in done]))
    else:
        print(summary(done))
    for onnx in stale_exports(Path(args.run), DEFAULT_WEIGHTS):
        print(f"note: {onnx} still has the previous temperature; export it again "
              f"({'python scripts/export_shipped_onnx.py' if onnx.name == 'default.onnx' else 'digitlab export'})")
    return 0


def stale_exports(run: Path, shipped: Path) -> list[Path]:
    """Exported copies beside what was just refitted, whose metadata holds the temperature they were exported with."""
    if run.is_dir():
        return [p for p in (run / "model.onnx", run / "model.pt") if p.is_file()]
    if run.resolve() == shipped.resolve():
        return [p for p in (shipped.with_suffix(".onnx"),) if p.is_file()]
    return []


def eval_calibration(calibration: Calibration, logits: np.ndarray, labels: np.ndarray, path: Path,
                     title: str) -> tuple[dict, Path]:
    """NLL, ECE and reliability bins on the test set before and after the model's temperature, and the
    reliability diagram (uncalibrated and calibrated side by side) written to `path`."""
    from digitlab.calibration import assess
    from digitlab.plots import plot_reliability

    report = assess(logits, labels, calibration.temperature)
    panels = [("uncalibrated (T = 1)", report["before"])]
    if calibration.fitted:
        panels.append((f"calibrated (T = {calibration.temperature:.3g}, fitted on validation)", report["after"]))
    png = plot_reliability(panels, path, title=title)
    return {**calibration.describe(), "validation": calibration.validation, "test": report}, png


def calibration_lines(calibration: dict) -> list[str]:
    """eval's lines about probabilities: the temperature, and test ECE and NLL before and after it."""
    before, after = calibration["test"]["before"], calibration["test"]["after"]
    if not calibration["calibrated"]:
        return [f"probabilities: {calibration['note']}",
                f"test ECE {before['ece']:.2%}, NLL {before['nll']:.4f} (15 bins, top class)"]
    return [f"probabilities: {calibration['note']}",
            f"test ECE {before['ece']:.2%} -> {after['ece']:.2%}, NLL {before['nll']:.4f} -> {after['nll']:.4f} "
            "(uncalibrated -> calibrated; 15 bins, top class)"]
