"""One file per meta-learning algorithm, each a short read of its paper's algorithm box."""
from .base import MetaLearner
from .baselines import FromScratch, Pretrained
from .bmaml import BMAML, EMAML
from .imaml import IMAML
from .llama import LLAMA
from .maml import MAML
from .maml_noise import MAMLNoise
from .maml_plus_plus import MAMLPlusPlus
from .meta_sgd import MetaSGD
from .mmaml import MMAML, MultiMAML
from .platipus import PLATIPUS
from .reptile import Reptile

__all__ = ["MetaLearner", "MAML", "Reptile", "LLAMA", "IMAML", "BMAML", "EMAML", "PLATIPUS", "Pretrained",
           "FromScratch", "MAMLPlusPlus", "MetaSGD", "MMAML", "MultiMAML", "MAMLNoise"]
