"""`digitlab sweep` (run trials of a study) and `digitlab sweep show` (what a study holds)."""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict

from digitlab.errors import ConfigError

STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")  # it becomes runs/sweeps/NAME: no path in it


def cmd_sweep(args: argparse.Namespace) -> int:
    require_optuna()
    if args.sweep_command == "show":
        return show(args)
    from digitlab.commands.training import recipe_base
    from digitlab.config import field_types, make_config
    from digitlab.sweep.objective import TrialSpec
    from digitlab.sweep.runner import DEFAULT_OUT_ROOT, SweepPlan, run_sweep, threads_per_trial
    from digitlab.sweep.space import search_space
    from digitlab.sweep.storage import check_url, storage_url

    if not args.study:
        raise ConfigError("name the study: --study NAME (a new name starts a study, an existing one goes on)")
    if not STUDY_NAME.fullmatch(args.study):
        raise ConfigError(f"--study {args.study!r}: use letters, digits, '.', '_' and '-' (it names a folder too), "
                          "at most 100 characters")
    if args.storage:
        check_url(args.storage)
    overrides = {k: v for k, v in vars(args).items() if k in field_types() and v is not None}
    base = asdict(make_config(recipe_base(args), **overrides))
    threads = threads_per_trial(args.jobs, base["threads"] if "threads" in overrides else 0)
    out = args.sweep_out or str(DEFAULT_OUT_ROOT / args.study)
    spec = TrialSpec(base=base, params=search_space(args.param or [], args.space), out=out, threads=threads)
    plan = SweepPlan(args.study, storage_url(args.storage), args.trials, args.jobs, args.pruner, spec)
    print(f"study {args.study}: {args.trials} trials of {base.get('preset') or base['model']}, searching "
          f"{'; '.join(p.describe() for p in spec.params)}; trial folders in {out}", flush=True)
    run_sweep(plan)
    return show(argparse.Namespace(name=args.study, storage=plan.storage, json=False, out=out, no_figures=False))


def show(args: argparse.Namespace) -> int:
    from digitlab.sweep.report import format_report, study_report
    from digitlab.sweep.storage import storage_url

    report = study_report(args.name, storage_url(args.storage, create=False), args.out, figures=not args.no_figures)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(format_report(report))
    return 0


def require_optuna() -> None:
    """A one-line error, not an ImportError traceback, when the `sweep` extra is not installed."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("digitlab sweep needs Optuna: pip install 'digitlab[sweep]'") from None

