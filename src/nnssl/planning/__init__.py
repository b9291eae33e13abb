"""Fingerprint extraction and experiment planning (``dataset_fingerprint.json`` -> ``nnsslPlans.json``)."""

from nnssl.planning.fingerprint import extract_fingerprint, extract_fingerprint_for_dataset, fingerprint_path
from nnssl.planning.planner import PLANNERS, ExperimentPlanner, plan_experiment_for_dataset
from nnssl.planning.plans import DEFAULT_PLANS_NAME, ConfigurationPlan, Plan, PlanError, load_plans, plans_path

__all__ = [
    "DEFAULT_PLANS_NAME",
    "PLANNERS",
    "ConfigurationPlan",
    "ExperimentPlanner",
    "Plan",
    "PlanError",
    "extract_fingerprint",
    "extract_fingerprint_for_dataset",
    "fingerprint_path",
    "load_plans",
    "plan_experiment_for_dataset",
    "plans_path",
]
