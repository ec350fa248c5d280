"""What each `digitlab` subcommand does: call the library, print the result. No ML logic here.

cli.py parses the arguments and calls `cmd_<command>` from this package; one module per job:

    info.py      data, models, summary: what datasets, models and presets there are
    training.py  train, and eval, plot on the runs it makes
    calibrate.py calibrate: a run's temperature on its hold-out; eval's calibration figures
    compare.py   compare: a table, the spread over seeds, a chart across finished runs
    predict.py   predict (its inputs: inputs.py, shared with explain)
    explain.py   explain: heat maps, layer activations, the embedding map
    export.py    export
    serve.py     serve
    sweep.py     sweep, sweep show: Optuna studies of run folders (the library side is digitlab.sweep)

None of them imports torch at module level: `digitlab predict` with the shipped model runs without it.
"""
from digitlab.commands.calibrate import cmd_calibrate
from digitlab.commands.compare import cmd_compare
from digitlab.commands.explain import cmd_explain
from digitlab.commands.export import cmd_export
from digitlab.commands.info import cmd_data, cmd_models, cmd_summary
from digitlab.commands.predict import cmd_predict
from digitlab.commands.serve import cmd_serve
from digitlab.commands.sweep import cmd_sweep
from digitlab.commands.training import cmd_eval, cmd_plot, cmd_train

__all__ = ["cmd_calibrate", "cmd_compare", "cmd_data", "cmd_eval", "cmd_explain", "cmd_export", "cmd_models",
           "cmd_plot", "cmd_predict", "cmd_serve", "cmd_summary", "cmd_sweep", "cmd_train"]
