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
}


def published(algorithm: str, benchmark: str, ways: int, shots: int):
    """``{"mean": .., "ci95": ..}`` in %, or ``None`` if no paper reports this setting."""
    hit = PUBLISHED.get((algorithm, benchmark, ways, shots))
    return None if hit is None else {"mean": hit[0], "ci95": hit[1]}
