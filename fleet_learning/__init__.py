"""What cloud, gateway and device share to learn: training recipes, the trainer, and Flower apps.

Nothing here imports the daemons (edge_agent, edge_gateway, cloud_controller): a device's Flower
SuperNode, the gateway's site aggregator and the controller's jobs all import this package alone.
"""

from fleet_learning.recipes import Hyperparameters, TrainingRecipe, build_model, default_recipe
from fleet_learning.trainer import EvalStats, Standardisation, TrainStats, evaluate, fit

__all__ = [
    "EvalStats",
    "Hyperparameters",
    "Standardisation",
    "TrainStats",
    "TrainingRecipe",
    "build_model",
    "default_recipe",
    "evaluate",
    "fit",
]
