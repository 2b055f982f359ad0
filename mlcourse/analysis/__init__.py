"""Analyses that the chapters check numerically: Taylor expansions of meta-gradients, toy geometry,
evidence and early stopping as a prior; the metrics of ambiguous tasks (coverage) and task embeddings."""
from . import ambiguous, embedding, evidence, manifolds, taylor

__all__ = ["ambiguous", "embedding", "evidence", "manifolds", "taylor"]
