"""`digitlab compare`: one table, the spread of each recipe over seeds, and one chart across finished runs.

A run that stopped before its planned end is left out with a one-line warning saying how far it got (shown
marked with --include-unfinished, never pooled into a recipe); the best row goes by validation where the run
has a hold-out, and the table says which split picked it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from digitlab.errors import RunError

HEADER = ["run", "preset/model", "dataset", "seed", "epochs", "final test", "final val", "best by", "best",
          "its test", "s/epoch"]
LEFT_ALIGNED = {"run", "preset/model", "dataset", "best by"}
BEST_BY = {"validation": "val", "test": "test", "nothing": "last"}  # the split each selection rule picked on
UNFINISHED_MARK = " [unfinished]"
NOTES = {
    "test": "best by test: no validation split, so the best row was picked on the test set (an optimistic figure)",
    "last": "best by last: a fixed schedule selects nothing; its best checkpoint is the last evaluation",
    "unfinished": "[unfinished]: stopped before its planned end; in no recipe group",
}


def read_runs(paths: list[Path]) -> tuple[list[tuple[dict, list[dict]]], list[dict]]:
    """Each run's table row and history, and the runs that never got to a first evaluation (`compare runs/*`
    goes on past those: nothing to show yet, nothing wrong either)."""
    from digitlab.compare import IncompleteRun, run_summary

    summaries, empty = [], []
    for run in paths:
        try:
            summaries.append(run_summary(run))
        except IncompleteRun as e:
            empty.append({"run": e.run, "what": e.what, "progress": e.progress})
    return summaries, empty


def pick_shown(summaries: list[tuple[dict, list[dict]]], empty: list[dict],
               include_unfinished: bool) -> tuple[list[tuple[dict, list[dict]]], list[dict]]:
    """The runs the table and chart show, and every unfinished run (what is left out, or shown marked)."""
    unfinished = [{"run": row["run"], "what": row["what"], "progress": row["progress"], "shown": include_unfinished}
                  for row, _ in summaries if not row["finished"]]
    unfinished += [{**entry, "shown": False} for entry in empty]
    shown = [(row, history) for row, history in summaries if include_unfinished or row["finished"]]
    return shown, unfinished


def unfinished_words(entry: dict) -> str:
    """"runs/x (default, seed 1): unfinished, epoch 1 of 2": which run, what it is, how far it got."""
    return f"{entry['run']} ({entry['what']}): unfinished, {entry['progress']}"


def warn_unfinished(unfinished: list[dict]) -> None:
    """One stderr line per unfinished run left out, saying what it is and how far it got."""
    for entry in unfinished:
        if not entry["shown"]:
            print(f"digitlab: warning: skipping {unfinished_words(entry)}", file=sys.stderr)


def percent_or_dash(value: float | None) -> str:
    """An accuracy for the table, or "-" where the run has none (no hold-out, nothing selected)."""
    return f"{value:.2%}" if value is not None else "-"


def table_cells(name: str, row: dict) -> list[str]:
    """One run's cells: what it is, how far it went, its final test accuracy and the row its selection picked."""
    best = {"validation": row["best_val_accuracy"], "test": row["best_test_accuracy"]}.get(row["selected_on"])
    epochs = f"{row['epochs']:g}" if row["finished"] else f"{row['epochs']:g} of {row['planned_epochs']}"
    per_epoch = f"{row['seconds_per_epoch']:.1f}" if row["seconds_per_epoch"] is not None else "-"
    return [name + UNFINISHED_MARK * (not row["finished"]), f"{row['preset'] or '-'}/{row['model']}",
            row["dataset"], str(row["seed"]), epochs, percent_or_dash(row["final_test_accuracy"]),
            percent_or_dash(row["final_val_accuracy"]), BEST_BY[row["selected_on"]], percent_or_dash(best),
            percent_or_dash(row["best_test_accuracy"]), per_epoch]


def table_lines(cells: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text: names left-aligned, numbers right-aligned, two spaces between columns."""
    widths = [max(len(row[i]) for row in [HEADER, *cells]) for i in range(len(HEADER))]
    return ["  ".join(cell.ljust(w) if head in LEFT_ALIGNED else cell.rjust(w)
                      for head, cell, w in zip(HEADER, row, widths)).rstrip() for row in [HEADER, *cells]]


def notes_for(rows: list[dict]) -> list[str]:
    """The footnotes the table needs: how a test- or last-picked best reads, what [unfinished] means."""
    used = {BEST_BY[row["selected_on"]] for row in rows} | {"unfinished" for row in rows if not row["finished"]}
    return [text for key, text in NOTES.items() if key in used]


def points(sd: float | None) -> str:
    """A standard deviation in percentage points, the unit accuracies differ by."""
    return f"{100 * sd:.2f} points" if sd is not None else "-"


def spread_words(split: str, stats: dict) -> str:
    """"final test mean 97.10%, sd 0.12 points, range 96.98% to 97.22%", or one run's figure with no sd."""
    if stats["n"] == 1:
        return f"final {split} {stats['mean']:.2%} (no sd from one run)"
    return (f"final {split} mean {stats['mean']:.2%}, sd {points(stats['sd'])}, range {stats['min']:.2%} to "
            f"{stats['max']:.2%}")


def group_line(group: dict) -> str:
    """One recipe's line: what it is, n and its runs, and the spread of its final accuracies."""
    members = ", ".join(Path(r).name for r in group["runs"])
    figures = [spread_words(split, group[split]) for split in ("test", "val") if group[split]]
    epochs = f"{group['epochs']} epoch{'s' * (group['epochs'] != 1)}"
    return (f"recipe {group['recipe']} on {group['dataset']}, {epochs}, n={group['n']} ({members}): "
            f"{'; '.join(figures) or 'no final accuracy'}")


def display_names(rows: list[dict]) -> list[str]:
    """Folder names for the table; the paths when one folder name appears under different parents."""
    names = [Path(row["run"]).name for row in rows]
    return names if len(set(names)) == len(names) else [row["run"] for row in rows]


def draw_chart(shown: list[tuple[dict, list[dict]]], output: Path) -> tuple[Path, str]:
    """The chart, its lines named by recipe and seed; returns its path and what accuracy it shows."""
    from digitlab.compare import plotted_split, run_labels
    from digitlab.plots import plot_compare, split_caption

    rows = [row for row, _ in shown]
    labels = run_labels(rows)
    splits = {label: plotted_split(row) for label, row in zip(labels, rows)}
    out = plot_compare({label: history for label, (_, history) in zip(labels, shown)}, output,
                       datasets={label: row["dataset"] for label, row in zip(labels, rows)}, splits=splits,
                       faded={label for label, row in zip(labels, rows) if not row["finished"]})
    return out, split_caption(set(splits.values()))


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the table (or JSON) of the finished runs and their recipes, and write the chart."""
    from digitlab.compare import recipe_groups

    summaries, empty = read_runs([Path(run) for run in args.runs])
    shown, unfinished = pick_shown(summaries, empty, args.include_unfinished)
    if not shown:
        left = "; ".join(unfinished_words(entry) for entry in unfinished)
        hint = " (--include-unfinished shows them)" if summaries else ""
        raise RunError(f"no finished run to compare: {left}{hint}")
    warn_unfinished(unfinished)
    rows = [row for row, _ in shown]
    out, caption = draw_chart(shown, Path(args.output))
    groups = recipe_groups(rows)
    if args.json:
        print(json.dumps({"runs": rows, "recipes": groups, "unfinished": unfinished, "figure": str(out)}, indent=2))
        return 0
    for line in table_lines([table_cells(name, row) for name, row in zip(display_names(rows), rows)]):
        print(line)
    for note in notes_for(rows):
        print(note)
    for group in groups:
        print(group_line(group))
    print(f"wrote {out} ({caption}: {len(rows)} run{'s' * (len(rows) != 1)})")
    return 0
