"""The engine: one training loop for every method (step, precision, DDP, NaN guard, checkpoints, logging)."""

from nnssl.engine.trainer import Callback, NonFiniteTrainingError, ResumeMismatchError, StepResult, Trainer

__all__ = ["Callback", "NonFiniteTrainingError", "ResumeMismatchError", "StepResult", "Trainer"]
