"""Hyperparameter tuning on Optuna: one persistent study per (row, protocol), each trial a real training run.

The entry point is ``m3oe_lightning/tune.py`` (``m3oe-tune``, ``make tune``); this package is its library:
the search-space grammar (:mod:`.space`), the study and its storage (:mod:`.study`), one trial as a
training subprocess (:mod:`.trial`), the pruning callback that runs inside that subprocess
(:mod:`.pruning`), the study's parent MLflow run (:mod:`.parent_run`) and the generated outputs
(:mod:`.outputs`). docs/tuning.md explains the design.
"""
