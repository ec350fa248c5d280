"""`digitlab compare`: one table and one chart across runs, and the spread of runs that repeat one recipe."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from digitlab.errors import RunError


def cmd_compare(args: argparse.Namespace) -> int:
    from digitlab.compare import IncompleteRun, recipe_spread, run_summary
    from digitlab.plots import plot_compare

    runs, summaries, skipped = [], [], []
    for run in map(Path, args.runs):  # `compare runs/*` goes on past a run that never got to its first evaluation
        try:
            summaries.append(run_summary(run))
            runs.append(run)
        except IncompleteRun as e:
            skipped.append(str(e))
    if not runs:
        raise RunError(f"no run to compare: {'; '.join(skipped)}")
    for reason in skipped:
        print(f"digitlab: warning: skipping {reason}", file=sys.stderr)
    names = [run.name for run in runs]
    if len(set(names)) < len(names):  # same folder name under different parents: use the paths
        names = [str(run) for run in runs]
    out = plot_compare({name: history for name, (_, history) in zip(names, summaries)}, Path(args.output),
                       datasets={name: row["dataset"] for name, (row, _) in zip(names, summaries)})
    rows = [row for row, _ in summaries]
    spread = recipe_spread(rows)
    if args.json:
        print(json.dumps({"runs": rows, "recipes": spread, "figure": str(out)}, indent=2))
        return 0
    width = max(len(n) for n in names) + 2
    print(f"{'run':<{width}}{'preset/model':<22}{'dataset':<15}{'epochs':>7}{'final':>9}{'best':>9}{'s/epoch':>9}")
    for name, row in zip(names, rows):
        recipe = f"{row['preset'] or '-'}/{row['model']}"
        per_epoch = f"{row['seconds_per_epoch']:.1f}" if row["seconds_per_epoch"] is not None else "-"
        print(f"{name:<{width}}{recipe:<22}{row['dataset']:<15}{row['epochs']:>7g}{row['final_accuracy']:>9.2%}"
              f"{row['best_accuracy']:>9.2%}{per_epoch:>9}")
    for group in spread:
        members = ", ".join(Path(r).name for r in group["runs"])
        print(f"{len(group['runs'])} runs of one recipe ({members}): final accuracy mean {group['mean_accuracy']:.2%},"
              f" sd {100 * group['sd_accuracy']:.2f} points, range {group['min_accuracy']:.2%}"
              f" to {group['max_accuracy']:.2%}")
    print(f"wrote {out} (test accuracy of {len(rows)} runs)")
    return 0
