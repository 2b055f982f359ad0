"""Task samplers: each has ``sample(meta_batch, generator=None) -> TaskBatch``."""
from .base import TaskBatch
from .miniimagenet import MiniImageNet
from .omniglot import Omniglot, OmniglotRuns
from .sinusoid import Sinusoid

__all__ = ["TaskBatch", "Sinusoid", "Omniglot", "OmniglotRuns", "MiniImageNet"]
