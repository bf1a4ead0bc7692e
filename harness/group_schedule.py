"""Runs a study's group search (:mod:`search.groups`) across processes: which group a trial
belongs to, and which candidate each group starts from.

Both are kept in the study, so a resumed search carries on where the killed one stopped:
the plan (user attribute ``search_groups``) is written by the first run and reused after,
and a group's start (``search_group_starts``) is chosen once, when its first trial is asked.
The seeded reference and int8 trials come first and belong to no group (``seed``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict

import optuna

from harness.errors import InputError
from results.records import TrialRecord
from search.groups import GroupError, GroupSettings, LayerGroup, group_at, plan_groups
from search.space import SEED_LABELS, SearchSpace

__all__ = ["GroupSchedule", "SEED_GROUP"]

SEED_GROUP = "seed"


class GroupSchedule:
    """The groups of one study, their budgets and starts."""

    def __init__(self, space: SearchSpace, settings: GroupSettings, trials: int,
                 layer_cost_pj: dict[str, float]) -> None:
        self.space, self.settings = space, settings
        self.seeds = sum(spec_params is not None for spec_params in
                         (space.params_for(space.reference_spec()), space.params_for(space.int8_spec())))
        try:
            self.groups: tuple[LayerGroup, ...] = plan_groups(space, layer_cost_pj, settings, trials - self.seeds)
        except GroupError as e:
            raise InputError(f"[search.groups] {e} (the {self.seeds} seed trials come first)") from e
        self.index: int | None = None  # the group being searched
        self.base_sampler: optuna.samplers.BaseSampler | None = None  # the study's own, set by adopt()

    def adopt(self, study: optuna.Study) -> None:
        """Keep the plan the study was started with; refuse other group settings on resume.
        Call it after the study's sampler is set: the groups' samplers wrap it."""
        self.base_sampler = study.sampler
        saved = study.user_attrs.get("search_groups")
        ran = any(t.user_attrs.get("label") not in SEED_LABELS for t in study.get_trials(deepcopy=False))
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.settings).items()}
        if saved is None:
            if ran:
                raise InputError(f"study {study.study_name!r} was searched without [search.groups]; "
                                 "pick another --study name for a group search")
            study.set_user_attr("search_groups", {"settings": settings, "groups": [asdict(g) for g in self.groups]})
            return
        if saved.get("settings") != settings:
            raise InputError(f"study {study.study_name!r} was searched with [search.groups] {saved.get('settings')}; "
                             "resume it with those settings or pick another --study name")
        # the saved budgets: a study resumed with more trials gives them to the last group
        self.groups = tuple(LayerGroup(g["name"], tuple(g["layers"]), tuple(g["params"]), g["cost_pj"], g["trials"])
                            for g in saved["groups"])

    def group_of(self, label: str, ordinal: int) -> int | None:
        """The group index of the ``ordinal``-th trial (from 0, seeds included); None for a seed."""
        if label in SEED_LABELS:
            return None
        return group_at(self.groups, max(0, ordinal - self.seeds))

    def group_name(self, label: str) -> str:
        """What a trial with ``label``, started now, records as its group."""
        return SEED_GROUP if label in SEED_LABELS or self.index is None else self.groups[self.index].name

    def enter(self, study: optuna.Study, index: int, records: Callable[[], Iterable[TrialRecord]],
              score: Callable[[TrialRecord], float | None]) -> int | None:
        """Make group ``index`` current: the other layers fixed at its start. Returns the trial
        number it starts from (None: the int8 candidate)."""
        starts = dict(study.user_attrs.get("search_group_starts", {}))
        key = str(index)
        if key not in starts:  # chosen once: a resumed process reuses it whatever it would pick now
            number, params = self._best_earlier(index, records(), score)
            starts[key] = {"trial": number, "params": self._in_space(params)}
            study.set_user_attr("search_group_starts", starts)
        start = self._in_space(starts[key]["params"])
        fixed = {name: value for name, value in start.items() if name not in self.groups[index].params}
        with warnings.catch_warnings():  # "experimental" since Optuna 2.4; the interface used is stable
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.sampler = optuna.samplers.PartialFixedSampler(fixed, self.base_sampler)
        self.index = index
        return starts[key]["trial"]

    def _best_earlier(self, index: int, records: Iterable[TrialRecord],
                      score: Callable[[TrialRecord], float | None]) -> tuple[int | None, dict[str, object]]:
        """The best-scoring complete, feasible trial of the seeds and the earlier groups (none
        for the first group: it starts from the int8 candidate, document 000's 8-bit reference)."""
        if index == 0:
            return None, self._int8_params()
        earlier = {SEED_GROUP, *(g.name for g in self.groups[:index])}
        best: tuple[float, int, dict[str, object]] | None = None
        for record in records:
            if record.state != "complete" or record.params.get("search_group") not in earlier:
                continue
            if any(flag.startswith("constraint:") for flag in record.flags):
                continue
            value = score(record)
            if value is None:
                continue
            if best is None or value > best[0] or (value == best[0] and record.trial_number < best[1]):
                best = (value, record.trial_number, record.params)
        if best is None:
            return None, self._int8_params()
        return best[1], best[2]

    def _int8_params(self) -> dict[str, object]:
        space = self.space
        return dict(space.params_for(space.int8_spec()) or space.params_for(space.reference_spec()) or {})

    def _in_space(self, params: dict[str, object]) -> dict[str, object]:
        """``params`` where they are still allowed choices, else the int8 candidate's (else the
        first choice): a fixed value outside its distribution would stop Optuna."""
        fallback = self._int8_params()
        out = {}
        for name, values in self.space.distributions().items():
            value = params.get(name)
            out[name] = value if value in values else fallback.get(name, values[0])
        return out
