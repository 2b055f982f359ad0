"""Analyses that the chapters check numerically: Taylor expansions of meta-gradients, toy geometry,
evidence and early stopping as a prior."""
from . import evidence, manifolds, taylor

__all__ = ["evidence", "manifolds", "taylor"]
