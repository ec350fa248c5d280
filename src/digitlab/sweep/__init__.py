"""Hyperparameter sweeps on Optuna: each trial an ordinary run folder, chosen on validation, never on test.

    space.py      --param NAME=LOW:HIGH[:log] | NAME=a,b,c and --space FILE.toml -> Param
    objective.py  one trial: its recipe, its run folder, the pruning reporter, its validation accuracy
    storage.py    the study's database (SQLite file, or PostgreSQL shared by machines); trials of dead processes
    runner.py     `digitlab sweep`: N trials here, or in K worker processes with the cores divided
    report.py     `digitlab sweep show`: the trials, the best, Optuna's plots, the best recipe as best.toml

Optuna is the `sweep` extra; nothing here imports it until a sweep runs.
"""
