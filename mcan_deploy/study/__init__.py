"""Reproduction studies of the report's experiments: plans x seeds, aggregated with error bars.

An experiment (``configs/study/*.toml``, ``spec.py``) names the report's claim, the plans that
test it at each scale (``cpu``: scaled down for a CPU; ``full``: the report's configuration) and
the seeds. Every (plan, seed) trains into its own run directory (``runs.py``), shared by the
experiments that use the plan. ``analyses.py`` turns the run directories into ``results.json``,
``table.md`` and plots, without training, so they can be remade at any time. A ``transfer``
experiment (``transfer.py``) trains its labels on named folders (cameras), may fine-tune one
label from another's model, and scores every final model on every camera's test pairs.
"""

from .pipeline import run_study
from .runs import plan_for_seed, run_dir, run_experiment
from .spec import Experiment, load_experiment

__all__ = ["Experiment", "load_experiment", "plan_for_seed", "run_dir", "run_experiment", "run_study"]
