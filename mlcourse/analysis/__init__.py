"""Analyses that the chapters check numerically: Taylor expansions of meta-gradients, toy geometry."""
from . import manifolds, taylor

__all__ = ["manifolds", "taylor"]
