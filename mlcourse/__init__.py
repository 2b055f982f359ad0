"""mlcourse: small, correct, fast reference implementations of MAML and its derivatives.

The package behind the executable textbook; see the README and the book for a tour.
"""
from . import (algorithms, analysis, curvature, functional, implicit, modulation, nn, plots, profiling, published, recipes,
               tasks, widgets)
from .budget import Budget, get_budget
from .train import confidence_interval, evaluate, meta_train
from .utils import default_device, seed_everything

__version__ = "0.1.0"

__all__ = ["algorithms", "analysis", "curvature", "functional", "implicit", "modulation", "nn", "plots", "profiling", "published",
           "recipes", "tasks", "widgets", "Budget", "get_budget", "confidence_interval",
           "evaluate", "meta_train", "default_device", "seed_everything"]
