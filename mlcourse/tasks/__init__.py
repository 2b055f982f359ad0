"""Task samplers: each has ``sample(meta_batch, generator=None) -> TaskBatch``."""
from .ambiguous import AmbiguousShapes, SinusoidOrLine
from .base import SharedTail, TaskBatch
from .linear import LinearRegression
from .miniimagenet import MiniImageNet
from .multimodal import ImageModes, Multimodal
from .omniglot import DataError, Omniglot, OmniglotRuns
from .sinusoid import Sinusoid

__all__ = ["TaskBatch", "SharedTail", "Sinusoid", "Omniglot", "OmniglotRuns", "MiniImageNet", "DataError", "LinearRegression",
           "SinusoidOrLine", "AmbiguousShapes", "Multimodal", "ImageModes"]
