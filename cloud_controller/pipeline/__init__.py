"""The retraining pipeline's steps, one module each, in the order a job runs them."""

from cloud_controller.pipeline.base import Step
from cloud_controller.pipeline.build import BuildStep
from cloud_controller.pipeline.dataset import DatasetStep
from cloud_controller.pipeline.evaluate import EvaluateStep
from cloud_controller.pipeline.register import RegisterStep
from cloud_controller.pipeline.rollout import RolloutStep
from cloud_controller.pipeline.train import TrainStep

PIPELINE: dict[str, Step] = {
    s.name: s
    for s in (DatasetStep(), TrainStep(), BuildStep(), EvaluateStep(), RegisterStep(), RolloutStep())
}

__all__ = ["PIPELINE", "Step"]
