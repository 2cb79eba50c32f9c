"""The search space: from a sweep YAML to trial parameters, and from parameters to a trial's config.

Plain functions, no Ray: the grid expansion, Optuna's define-by-run function and the
parameter -> config mapping are tested on their own.

Parameters are short names for the study's knobs, or any dotted config path:

    curriculum     instruct.curriculum: a preset, or an explicit stage order "wiki>switch"
    mix_ratio      instruct.mix_ratio (only drawn for the merged curriculum)
    learning_rate  instruct.train.learning_rate
    warmup_steps   instruct.train.warmup_steps
    epochs         instruct.train.epochs (per stage)
    model_preset   model.preset (each preset gets its own base model)

Parameters are conditional on the curriculum: `mix_ratio` is drawn only for `merged`, and every
instruction-tuning parameter (`instruct.train.*`: learning rate, warm-up, epochs, ...) for every
curriculum but `pt`, which does not train. A parameter not drawn is absent from the trial's
parameters (and empty on the leaderboard), so two `pt` trials never differ by an unused value.
"""

from __future__ import annotations

import itertools
from typing import Any

from classit.config import ClassitConfig, ConfigError, Dimension, parse_config

ALIASES = {
    "curriculum": "instruct.curriculum",
    "mix_ratio": "instruct.mix_ratio",
    "learning_rate": "instruct.train.learning_rate",
    "warmup_steps": "instruct.train.warmup_steps",
    "epochs": "instruct.train.epochs",
    "model_preset": "model.preset",
}
SEED_PATH = "instruct.train.seed"
ORDER_SEPARATOR = ">"


def is_conditional(name: str) -> bool:
    """Whether a parameter depends on the curriculum (see `applies`)."""
    return name == "mix_ratio" or config_path(name).startswith("instruct.train.")


def applies(name: str, curriculum: Any) -> bool:
    """Whether a parameter is drawn for a trial of this curriculum."""
    if name == "mix_ratio":
        return curriculum == "merged"
    if config_path(name).startswith("instruct.train."):
        return curriculum != "pt"
    return True


def trial_curriculum(base: ClassitConfig, params: dict[str, Any]) -> Any:
    return params.get("curriculum", base.instruct.curriculum)


def config_path(name: str) -> str:
    return ALIASES.get(name, name)


def curriculum_value(value: Any) -> Any:
    """A preset name stays; "wiki>switch" (or a list) becomes explicit sequential stages."""
    if isinstance(value, list):
        return [{"datasets": [d]} for d in value]
    if isinstance(value, str) and ORDER_SEPARATOR in value:
        return [{"datasets": [d.strip()]} for d in value.split(ORDER_SEPARATOR)]
    return value


def apply_params(base: ClassitConfig, params: dict[str, Any]) -> ClassitConfig:
    """The trial's config: the sweep's base config with the drawn parameters set."""
    data = base.model_dump(mode="json", exclude={"sweep"}, exclude_none=True)
    for name, value in params.items():
        if name == "seed":
            name = SEED_PATH
        path = config_path(name)
        if path == "instruct.curriculum":
            value = curriculum_value(value)
        parts = path.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return parse_config(data, source="sweep trial")


def check_space(base: ClassitConfig) -> None:
    """Every parameter names a real config field, is drawn for some curriculum the sweep takes, and
    every value it can take validates."""
    sweep = base.sweep
    curricula = _corner_values(sweep.space["curriculum"]) if "curriculum" in sweep.space else [base.instruct.curriculum]
    for name, dim in sweep.space.items():
        _check_field_exists(base, name, config_path(name))
        if is_conditional(name) and not any(applies(name, curriculum) for curriculum in curricula):
            drawn = "drawn for merged only" if name == "mix_ratio" else "not drawn for pt, which trains nothing"
            raise ConfigError(f"sweep.space.{name}: {drawn}, and the sweep's curricula are "
                              f"{', '.join(map(str, curricula))}")
        for value in _corner_values(dim):
            params = {name: value, **({"curriculum": "merged"} if name == "mix_ratio" else {})}
            try:
                apply_params(base, params)
            except ConfigError as err:
                detail = str(err).split(": ", 2)[-1]
                raise ConfigError(f"sweep.space.{name}: value {value!r}: {detail}") from None


def _check_field_exists(base: ClassitConfig, name: str, path: str) -> None:
    node: Any = base
    for part in path.split("."):
        fields = getattr(type(node), "model_fields", None)
        if fields is None or part not in fields:
            raise ConfigError(f"sweep.space.{name}: {path} is not a config field")
        node = getattr(node, part)
        if node is None:
            return  # an optional section left empty: its fields exist once it is set


def _corner_values(dim: Dimension) -> list[Any]:
    if dim.choice is not None:
        return dim.choice
    return list(dim.uniform or dim.loguniform or dim.integer)


def combinations(base: ClassitConfig, values: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of each parameter's values, conditional parameters only where they apply."""
    names = [n for n in values if not is_conditional(n)]
    combos = []
    for drawn in itertools.product(*(values[n] for n in names)):
        params = dict(zip(names, drawn))
        options = [{}]
        for cond in (n for n in values if is_conditional(n)):
            if applies(cond, trial_curriculum(base, params)):
                options = [{**o, cond: v} for o in options for v in values[cond]]
        combos += [{**params, **o} for o in options]
    return combos


def grid_trials(base: ClassitConfig) -> list[dict[str, Any]]:
    """Every combination of the choices, conditional parameters only where they apply, x seeds."""
    sweep = base.sweep
    combos = combinations(base, {n: d.choice for n, d in sweep.space.items()})
    return [{**params, "seed": seed} for params in combos for seed in sweep.seeds]


def corner_trials(base: ClassitConfig) -> list[dict[str, Any]]:
    """Every combination of the choices and the ends of every range (the first seed): the
    parameters that bound a search space's trials."""
    sweep = base.sweep
    combos = combinations(base, {n: _corner_values(d) for n, d in sweep.space.items()})
    return [{**params, "seed": sweep.seeds[0]} for params in combos]


class DefineByRun:
    """Optuna's define-by-run function: conditional parameters are drawn only where they apply.

    A class, not a closure, because Tune pickles the searcher into the sweep's saved state.
    """

    def __init__(self, space: dict[str, Dimension], curriculum: Any = None):
        self.space = space
        self.curriculum = curriculum  # the config's, where the curriculum is not swept

    @staticmethod
    def suggest(trial, name: str, dim: Dimension):
        if dim.choice is not None:
            return trial.suggest_categorical(name, dim.choice)
        if dim.uniform is not None:
            return trial.suggest_float(name, *dim.uniform)
        if dim.loguniform is not None:
            return trial.suggest_float(name, *dim.loguniform, log=True)
        return trial.suggest_int(name, *dim.integer)

    def __call__(self, trial) -> None:
        drawn = {name: self.suggest(trial, name, dim) for name, dim in self.space.items() if not is_conditional(name)}
        for name, dim in self.space.items():
            if is_conditional(name) and applies(name, drawn.get("curriculum", self.curriculum)):
                self.suggest(trial, name, dim)


def planned_trial_count(base: ClassitConfig) -> int:
    sweep = base.sweep
    return len(grid_trials(base)) if sweep.search == "grid" else sweep.num_samples * len(sweep.seeds)


def gpu_hours(parameters: int, words: int, tokens_per_word: float = 1.3, peak_flops: float = 312e12,
              utilisation: float = 0.4) -> float:
    """Training cost estimate: 6 x parameters x tokens over the GPU's sustained rate (A100 bf16, 40%)."""
    return 6 * parameters * words * tokens_per_word / (peak_flops * utilisation) / 3600


def format_params(params: dict) -> str:
    """Parameters as `name=value, ...`, floats to three significant digits."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
