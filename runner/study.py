"""Adaptive sweeps (`sweep.optuna`): Optuna's ask-and-tell, the study kept in the project's run state
(.itwin-run/studies/, Optuna's journal file), so that a rerun resumes it. A trial's values are asked when its point
is about to run, once the wave of trials before it has ended and been told its metric."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.sweep import Point, metric_of
from runner.workflow import StepSpec, Workflow


class Studies:
    """The studies of a run's adaptive sweeps, opened when first needed (Optuna is imported only then)."""

    def __init__(self, wf: Workflow, folder: Path):
        self.wf, self.folder = wf, folder
        self._open: dict[str, Any] = {}

    def trial(self, step: StepSpec, status: dict[str, str], ask: bool = True) -> StepSpec:
        """A trial with its values: asked by an earlier run, or now (`ask`) after telling the trials that ended.
        Any other step, and a trial not asked yet where `ask` is false (a dry run), as it is."""
        sweep = self.wf.step(step.parent) if step.parent else None
        if not (sweep and sweep.sweep and sweep.sweep.optuna and step.point):
            return step
        study = self._told(sweep, status)
        number = int(step.point.slug.removeprefix("trial-"))
        if number >= len(study.get_trials(deepcopy=False)) and not ask:
            return step
        while number >= len(study.get_trials(deepcopy=False)):  # trials are asked in their order
            study.ask(self._space(sweep))
        values = self._values(sweep, study.get_trials(deepcopy=False)[number])
        return replace(step, params={**step.params, **values}, point=Point(step.point.slug, values))

    def points(self, sweep: StepSpec, status: dict[str, str]) -> list[Point]:
        """A sweep's points with their values (a trial never asked has none), the ended trials told."""
        if not (sweep.sweep and sweep.sweep.optuna):
            return list(sweep.points)
        trials = self._told(sweep, status).get_trials(deepcopy=False)
        return [Point(p.slug, self._values(sweep, trials[k]) if k < len(trials) else {})
                for k, p in enumerate(sweep.points)]

    def _values(self, sweep: StepSpec, trial: Any) -> dict[str, Any]:
        return {key: trial.params[key] for key in sweep.sweep.optuna.space if key in trial.params}  # type: ignore[union-attr]

    def _told(self, sweep: StepSpec, status: dict[str, str]) -> Any:
        """The sweep's study, each of its trials that ended since told: its metric (from its metrics.json), or that
        it failed. An interrupted trial stays open: a rerun runs it again with the same values."""
        from optuna.trial import TrialState

        study = self._study(sweep)
        output = self.wf.datasets[sweep.output or ""]
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            state = status.get(f"{sweep.name}.trial-{trial.number}")
            value = metric_of(output / f"trial-{trial.number}", sweep.sweep.best.metric)  # type: ignore[union-attr]
            if state in ("done", "up to date") and value is not None:
                study.tell(trial.number, value)
            elif state in ("done", "up to date", "failed"):
                study.tell(trial.number, state=TrialState.FAIL)
        return study

    def _study(self, sweep: StepSpec) -> Any:
        if sweep.name not in self._open:
            import optuna  # only where a sweep is adaptive (0.4 s to import)
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            cfg = sweep.sweep
            assert cfg and cfg.optuna
            # one study per workflow file, step, space, seed and metric: changing any starts another (trials and
            # parallel may change: more trials go on with what the study learnt)
            what = [str(self.wf.path.relative_to(self.wf.root) if self.wf.root in self.wf.path.parents else
                        self.wf.path), sweep.name, cfg.optuna.model_dump(by_alias=True, exclude={"trials"}),
                    cfg.best.model_dump()]
            key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
            self.folder.mkdir(parents=True, exist_ok=True)
            storage = JournalStorage(JournalFileBackend(str(self.folder / f"{sweep.name}-{key}.journal")))
            self._open[sweep.name] = optuna.create_study(
                study_name=f"{sweep.name}-{key}", storage=storage, load_if_exists=True,
                direction="minimize" if cfg.best.mode == "min" else "maximize",
                sampler=optuna.samplers.TPESampler(seed=cfg.optuna.seed))
        return self._open[sweep.name]

    def _space(self, sweep: StepSpec) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        out: dict[str, Any] = {}
        for key, dim in sweep.sweep.optuna.space.items():  # type: ignore[union-attr]
            if dim.choice is not None:
                out[key] = CategoricalDistribution(dim.choice)
            elif dim.int_ is not None:
                out[key] = IntDistribution(*dim.int_)
            else:
                out[key] = FloatDistribution(*(dim.loguniform or dim.uniform), log=dim.loguniform is not None)  # type: ignore[misc]
        return out
