"""One file per meta-learning algorithm, each a short read of its paper's algorithm box."""
from .base import MetaLearner
from .baselines import FromScratch, Pretrained
from .maml import MAML

__all__ = ["MetaLearner", "MAML", "Pretrained", "FromScratch"]
