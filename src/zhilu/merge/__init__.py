"""Model merging against catastrophic forgetting: fine-tune(s) + base through mergekit.

``python -m zhilu.merge merge=linear models=[<run dir>] base=<base> merge.weight=0.5``; see
:mod:`zhilu.merge.methods` for the methods and :mod:`zhilu.merge.run` for the Python API.
"""

from zhilu.merge.inputs import ModelInput, base_from_run, check_compatible, resolve_input
from zhilu.merge.methods import DareTies, Linear, MergeMethod, Slerp, TaskArithmetic, Ties
from zhilu.merge.run import CONFIG_NAME, MergePlan, merge, plan_merge, run_plan

__all__ = ["CONFIG_NAME", "DareTies", "Linear", "MergeMethod", "MergePlan", "ModelInput", "Slerp",
           "TaskArithmetic", "Ties", "base_from_run", "check_compatible", "merge", "plan_merge",
           "resolve_input", "run_plan"]
