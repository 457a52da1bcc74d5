"""The selection stage (DEALRec §4.3): pure functions from per-sample scores to selected indices.

- :mod:`.scoreset`: :class:`ScoreSet`, the scores a strategy may use, and the eligible mask;
- :mod:`.coverage`: Eq. 13 (:func:`overall_score`) and coverage-enhanced selection
  (:func:`coverage_select`) returning a :class:`SelectionResult`;
- :mod:`.strategies`: the registry (``dealrec``, ablations and baselines);
- :mod:`.plot`: :func:`plot_selection` (matplotlib is imported only when plotting).
"""

from dealrec.select.coverage import SelectionResult, coverage_select, minmax, overall_score, stratum_budgets
from dealrec.select.plot import plot_selection
from dealrec.select.scoreset import SCORE_SOURCES, MissingScoreError, ScoreSet
from dealrec.select.strategies import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    SelectConfig,
    StrategySpec,
    get_strategy,
    register_strategy,
    run_label,
    run_strategy,
    strategy_spec,
)

__all__ = [
    "DEFAULT_STRATEGY",
    "SCORE_SOURCES",
    "STRATEGIES",
    "MissingScoreError",
    "ScoreSet",
    "SelectConfig",
    "SelectionResult",
    "StrategySpec",
    "coverage_select",
    "get_strategy",
    "minmax",
    "overall_score",
    "plot_selection",
    "register_strategy",
    "run_label",
    "run_strategy",
    "strategy_spec",
    "stratum_budgets",
]
