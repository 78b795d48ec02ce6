"""The Optuna study behind a sweep: durable storage shared by the sweep and its trials' workers.

    url = storage_url(sweep.storage, config.artifact_store, plan.study)   # where the study lives
    study = open_study(url, plan.study, direction, sweep, parallelism)      # created, or resumed
    params = study_trial_params(study, distributions)                       # ask: the next trial's parameters

Where the study lives: `sweep.storage` when set (an RDB URL every worker reaches: postgresql://, mysql://,
sqlite:///); otherwise a journal file next to the run's outputs, `{artifact_store}/sweeps/{study}.journal`, which
needs a local (or mounted) store: Optuna's journal file takes file locks, which an s3:// store has not. The
sweep asks and tells in its own process; the trials' workers only report each epoch's value and read whether to
stop (pruning.py). A killed sweep leaves its finished trials in the storage; the next run with the same study
keeps them, and the trials it finds still RUNNING (their sweep died with them) are marked failed and run again with
the same parameters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .space import Distribution, Param, Pruner, SweepConfig, SweepError, remote_store_needs_storage

JOURNAL = "journal://"
INTERRUPTED = "interrupted"  # user attr of a trial whose sweep was killed while it ran (re-run, not counted)


def storage_url(storage: str | None, artifact_store: str, study: str) -> str:
    """The study's storage URL: `storage`, or a journal file under a local artifact store (made absolute: every
    worker on this host, and the resumed sweep in another directory, must find the same file)."""
    if storage:
        return storage
    root = artifact_store.removeprefix("file://")
    if "://" in root:
        raise SweepError(remote_store_needs_storage(artifact_store))
    return f"{JOURNAL}{Path(root, 'sweeps', f'{study}.journal').resolve()}"


def shown(url: str) -> str:
    """The storage URL without a password (for logs, artifacts and cards)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str):
    """An Optuna storage for `url`: a journal file, or an RDB (with `${VAR}` read from the environment)."""
    import optuna

    if url.startswith(JOURNAL):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix(JOURNAL))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    missing = [v for v in re.findall(r"\$\{(\w+)\}", url) if v not in os.environ]
    if missing:
        raise SweepError(f"sweep.storage: ${{{missing[0]}}} is not set in this environment")
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: os.environ[m.group(1)], url)
    # heartbeats: a trial whose worker died is failed by the storage itself after a while (RDB only)
    return optuna.storages.RDBStorage(expanded, heartbeat_interval=60, grace_period=300)


def make_pruner(pruner: Pruner | str, startup_trials: int, warmup_epochs: int):
    """The Optuna pruner for the sweep; the same on the sweep's side and every trial's worker (it is not stored)."""
    import optuna

    pruner = Pruner(pruner)
    if pruner is Pruner.median:
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if pruner is Pruner.successive_halving:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup_epochs + 1)
    return optuna.pruners.NopPruner()


def distributions(space: dict[str, Param]) -> dict[str, Any]:
    """The space as Optuna distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, p in space.items():
        if p.distribution is Distribution.choice:
            out[key] = CategoricalDistribution(p.choices)
        elif p.distribution is Distribution.int:
            out[key] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1))
        else:
            out[key] = FloatDistribution(p.low, p.high, log=p.distribution is Distribution.log_uniform,
                                         step=p.step if p.distribution is Distribution.uniform else None)
    return out


def open_study(url: str, name: str, direction: str, sweep: SweepConfig, parallelism: int,
               recipe_params: dict[str, Any] | None = None):
    """Create or resume the study: TPE (seeded; constant liar when trials run side by side), the sweep's pruner.
    A new study gets the recipe's own values as trial 0 (`recipe_params`); a resumed one has its interrupted trials
    marked and queued again."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=max(2, min(10, sweep.trials // 3)),
                                         constant_liar=parallelism > 1)
    study = optuna.create_study(storage=open_storage(url), study_name=name, load_if_exists=True, sampler=sampler,
                                pruner=make_pruner(sweep.pruner, sweep.startup_trials, sweep.warmup_epochs),
                                direction="maximize" if direction == "higher" else "minimize")
    trials = study.get_trials(deepcopy=False)
    if not trials and recipe_params:
        study.enqueue_trial(recipe_params, user_attrs={"origin": "recipe"})
    for t in trials:
        if t.state is TrialState.RUNNING:  # its sweep was killed: run it again, same parameters
            study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
    return study


def finished(study) -> list:
    """The trials that count towards `sweep.trials`: complete, pruned, or failed on their own (not interrupted)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get(INTERRUPTED)]
