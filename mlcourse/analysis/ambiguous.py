"""Scores of sampled classifiers on ambiguous tasks: accuracy, coverage and NLL (PLATIPUS, Finn et al.
2018, sec. 6 and Table 1).

Every function takes the outputs of S sampled classifiers at once, ``logits`` of shape
(S, T, Q, 2): S samples (S = 1 for a deterministic method such as MAML), T tasks, Q query examples,
two classes. The hypotheses of a task are its possible explanations, given as their query labels
``hypothesis_labels`` (T, H, Q), e.g. from :meth:`mlcourse.tasks.ambiguous.AmbiguousShapes.hypothesis_labels`.
"""
from __future__ import annotations

import torch


def _check(logits: torch.Tensor, labels: torch.Tensor, what: str):
    if logits.dim() != 4:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected (samples, tasks, queries, classes)")
    tasks, queries = logits.shape[1:3]
    if labels.shape[0] != tasks or labels.shape[-1] != queries:
        raise ValueError(f"{what} has shape {tuple(labels.shape)}; expected {tasks} tasks and {queries} queries "
                         f"like logits {tuple(logits.shape)}")


def assigned_hypotheses(logits: torch.Tensor, hypothesis_labels: torch.Tensor) -> torch.Tensor:
    """(S, T): for each sample, the hypothesis under whose labels its query log-likelihood is largest.

    log p_s(labels of h) = sum_q log softmax(logits[s, t, q])[labels[t, h, q]]; ties go to the
    hypothesis listed first."""
    _check(logits, hypothesis_labels, "hypothesis_labels")
    log_p = torch.log_softmax(logits.double(), dim=-1)                              # (S, T, Q, C)
    labels = hypothesis_labels.unsqueeze(0).expand(logits.shape[0], -1, -1, -1)     # (S, T, H, Q)
    per_query = log_p.unsqueeze(2).expand(-1, -1, labels.shape[2], -1, -1)          # (S, T, H, Q, C)
    likelihood = per_query.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)     # (S, T, H)
    return likelihood.argmax(-1)


def coverage(logits: torch.Tensor, hypothesis_labels: torch.Tensor) -> torch.Tensor:
    """(T,): how many of a task's hypotheses at least one sample is assigned to (1 to H).

    The paper's coverage: each sampled classifier is assigned to the explanation (of the three
    two-attribute tasks) under which its query log-likelihood is highest; a task's coverage counts
    the explanations that get at least one sample. One classifier, or identical ones, cover 1."""
    assigned = assigned_hypotheses(logits, hypothesis_labels)                       # (S, T)
    hypotheses = hypothesis_labels.shape[1]
    hit = torch.zeros(assigned.shape[1], hypotheses, dtype=torch.bool)
    hit.scatter_(1, assigned.t().cpu(), True)
    return hit.sum(1).double()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(T,): the accuracy of one sampled classifier on the task's true query labels (T, Q),
    averaged over the samples."""
    _check(logits, labels, "labels")
    return (logits.argmax(-1) == labels.unsqueeze(0)).double().mean(dim=(0, 2)).cpu()


def predictive_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(T,): -mean_q log p(y_q | x_q) under the predictive distribution, the average of the samples'
    probabilities p(y | x) = 1/S sum_s softmax(logits_s)[y] (for S = 1, the cross-entropy)."""
    _check(logits, labels, "labels")
    log_p = torch.log_softmax(logits.double(), dim=-1)
    picked = log_p.gather(-1, labels.unsqueeze(0).expand(logits.shape[0], -1, -1).unsqueeze(-1)).squeeze(-1)
    samples = torch.tensor(float(logits.shape[0]), dtype=torch.float64).log()
    return -(torch.logsumexp(picked, dim=0) - samples).mean(-1).cpu()


def ambiguity_scores(logits: torch.Tensor, labels: torch.Tensor, hypothesis_labels: torch.Tensor) -> dict:
    """Per-task ``accuracy``, ``coverage`` and ``nll`` (each (T,)) of S sampled classifiers."""
    return {"accuracy": accuracy(logits, labels), "coverage": coverage(logits, hypothesis_labels),
            "nll": predictive_nll(logits, labels)}
