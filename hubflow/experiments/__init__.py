"""Experiments: hyper-parameter sweeps over a recipe, searched by Optuna (TPE) and pruned per epoch.

    space.py     SweepConfig (the recipe's `sweep:` section), the search space over recipe fields, applying a
                 trial's parameters to the config (checked before anything trains)
    study.py     the Optuna study in durable storage: where it lives, its sampler and pruner, resuming a killed sweep
    pruning.py   the pruner as a training observer: each epoch's validation metric goes to the study; a pruned
                 trial stops at that evaluation (StopTrial)

The flow that drives them is flows/sweep.py (`hubflow sweep RECIPE`); tasks/sweep.py runs one trial.
"""
