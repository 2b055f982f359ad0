"""Task embeddings: a 2-D projection for figures and a number for "do the modes separate?" (chapter 8)."""
from __future__ import annotations

import torch


def pca_2d(embeddings: torch.Tensor) -> torch.Tensor:
    """The embeddings (tasks, D) projected on their two principal axes (tasks, 2): centred, then
    multiplied by the two right singular vectors of largest singular value. Signs are fixed so that
    each axis's largest coordinate is positive (the SVD leaves them free)."""
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embeddings have shape {tuple(embeddings.shape)}: expected (tasks >= 2, features)")
    centred = embeddings.double() - embeddings.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ vh[:2].T
    signs = torch.sign(projected.gather(0, projected.abs().argmax(0, keepdim=True)))
    return (projected * signs).to(embeddings.dtype)


def nearest_centroid_accuracy(train_embeddings: torch.Tensor, train_modes: torch.Tensor,
                              test_embeddings: torch.Tensor, test_modes: torch.Tensor) -> float:
    """The share of test tasks whose embedding is nearest (Euclidean) to the centroid of their own
    mode, centroids taken over the training tasks. Chance is about 1 / (number of modes)."""
    modes = int(train_modes.max()) + 1
    missing = [m for m in range(modes) if not (train_modes == m).any()]
    if missing:
        raise ValueError(f"modes {missing} have no training task: every mode in 0..{modes - 1} needs one")
    centroids = torch.stack([train_embeddings[train_modes == m].mean(0) for m in range(modes)])
    nearest = torch.cdist(test_embeddings.double(), centroids.double()).argmin(1)
    return (nearest == test_modes).double().mean().item()
