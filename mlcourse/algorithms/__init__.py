"""One file per meta-learning algorithm, each a short read of its paper's algorithm box."""
from .base import MetaLearner
from .baselines import FromScratch, Pretrained
from .bmaml import BMAML, EMAML
from .imaml import IMAML
from .llama import LLAMA
from .maml import MAML
from .platipus import PLATIPUS
from .reptile import Reptile

__all__ = ["MetaLearner", "MAML", "Reptile", "LLAMA", "IMAML", "BMAML", "EMAML", "PLATIPUS", "Pretrained", "FromScratch"]
