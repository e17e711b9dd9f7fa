"""Headless rollout evaluation (`worldsim eval`): how closely a model's dreams follow the real
game under the same actions, how well they follow the actions, and how fast they come.

    from worldsim.evaluation import EvalSettings, evaluate
    report = evaluate("runs/wm", "data/crafter", EvalSettings(episodes=16, horizon=15))

`run.py` runs the engine and measures, `episodes.py` picks the real windows, `game.py` replays
Crafter itself as a reference dream, `sensitivity.py` measures the action gap, `report.py` and
`media.py` write the report folder. The metrics themselves live in `worldsim.metrics`.
"""

from worldsim.evaluation.report import compare, load_report, summary_line
from worldsim.evaluation.run import EvalSettings, evaluate, parse_decoder

__all__ = ["EvalSettings", "evaluate", "parse_decoder", "compare", "load_report", "summary_line"]
