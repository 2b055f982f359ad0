"""Published figures the experiments are set beside (accuracy in %, mean and 95% half-width).

Sources: MAML (Finn et al., 2017, Table 1), Reptile (Nichol et al., 2018, Tables 1-2),
iMAML (Rajeswaran et al., 2019, Tables 2-3), LLAMA (Grant et al., 2018, Table 1),
MAML++ (Antoniou et al., 2019, Tables 1-2). ``None`` where a paper gives no interval.
"""
from __future__ import annotations

# (algorithm, benchmark, ways, shots) -> (mean %, 95% half-width % or None)
PUBLISHED = {
    ("maml", "omniglot", 5, 1): (98.7, 0.4),
    ("maml", "omniglot", 5, 5): (99.9, 0.1),
    ("maml", "omniglot", 20, 1): (95.8, 0.3),
    ("maml", "omniglot", 20, 5): (98.9, 0.2),
    ("fomaml", "omniglot", 5, 1): (98.3, 0.5),
    ("fomaml", "omniglot", 5, 5): (99.2, 0.2),
    ("fomaml", "omniglot", 20, 1): (89.4, 0.5),
    ("fomaml", "omniglot", 20, 5): (97.9, 0.1),
    ("maml", "miniimagenet", 5, 1): (48.70, 1.84),
    ("maml", "miniimagenet", 5, 5): (63.11, 0.92),
    ("fomaml", "miniimagenet", 5, 1): (48.07, 1.75),
    ("fomaml", "miniimagenet", 5, 5): (63.15, 0.91),
    # Reptile (Nichol et al., Table 1): without and with transduction (batch statistics of the query set)
    ("reptile", "omniglot", 5, 1): (95.39, 0.09),
    ("reptile", "omniglot", 5, 5): (98.90, 0.10),
    ("reptile", "omniglot", 20, 1): (88.14, 0.15),
    ("reptile", "omniglot", 20, 5): (96.65, 0.33),
    ("reptile-transductive", "omniglot", 5, 1): (97.68, 0.04),
    ("reptile-transductive", "omniglot", 5, 5): (99.48, 0.06),
    ("reptile-transductive", "omniglot", 20, 1): (89.43, 0.14),
    ("reptile-transductive", "omniglot", 20, 5): (97.12, 0.32),
    ("reptile", "miniimagenet", 5, 1): (47.07, 0.26),
    ("reptile", "miniimagenet", 5, 5): (62.74, 0.37),
    ("reptile-transductive", "miniimagenet", 5, 1): (49.97, 0.32),
    ("reptile-transductive", "miniimagenet", 5, 5): (65.99, 0.58),
    # iMAML (Rajeswaran et al., Tables 2-3): gradient-descent and Hessian-free inner solvers
    ("imaml-gd", "omniglot", 5, 1): (99.16, 0.35),
    ("imaml-gd", "omniglot", 5, 5): (99.67, 0.12),
    ("imaml-gd", "omniglot", 20, 1): (94.46, 0.42),
    ("imaml-gd", "omniglot", 20, 5): (98.69, 0.1),
    ("imaml-hf", "omniglot", 5, 1): (99.50, 0.26),
    ("imaml-hf", "omniglot", 5, 5): (99.74, 0.11),
    ("imaml-hf", "omniglot", 20, 1): (96.18, 0.36),
    ("imaml-hf", "omniglot", 20, 5): (99.14, 0.1),
    ("imaml-gd", "miniimagenet", 5, 1): (48.96, 1.84),
    ("imaml-hf", "miniimagenet", 5, 1): (49.30, 1.88),
    # LLAMA (Grant et al., Table 1)
    ("llama", "miniimagenet", 5, 1): (49.40, 1.83),
}


def published(algorithm: str, benchmark: str, ways: int, shots: int):
    """``{"mean": .., "ci95": ..}`` in %, or ``None`` if no paper reports this setting."""
    hit = PUBLISHED.get((algorithm, benchmark, ways, shots))
    return None if hit is None else {"mean": hit[0], "ci95": hit[1]}
