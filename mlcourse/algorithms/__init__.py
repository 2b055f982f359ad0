"""One file per meta-learning algorithm, each a short read of its paper's algorithm box."""
from .amortised import AmortisedLearner
from .anil import ANIL
from .base import MetaLearner
from .baselines import FromScratch, Pretrained
from .bmaml import BMAML, EMAML
from .imaml import IMAML
from .llama import LLAMA
from .maml import MAML
from .maml_noise import MAMLNoise
from .maml_plus_plus import MAMLPlusPlus
from .matching_net import MatchingNet
from .meta_sgd import MetaSGD
from .mmaml import MMAML, MultiMAML
from .platipus import PLATIPUS
from .protomaml import ProtoMAML
from .protonet import ProtoNet
from .r2d2 import R2D2
from .relation_net import RelationNet
from .reptile import Reptile
from .snail import SNAIL

__all__ = ["MetaLearner", "MAML", "Reptile", "LLAMA", "IMAML", "BMAML", "EMAML", "PLATIPUS", "Pretrained",
           "FromScratch", "MAMLPlusPlus", "MetaSGD", "MMAML", "MultiMAML", "MAMLNoise", "AmortisedLearner",
           "ProtoNet", "MatchingNet", "RelationNet", "R2D2", "ProtoMAML", "ANIL", "SNAIL"]
