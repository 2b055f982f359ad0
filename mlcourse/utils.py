"""Small shared helpers: device choice and seeding."""
from __future__ import annotations

import random

import torch


def default_device() -> torch.device:
    """``cuda`` when a GPU is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's and torch's global generators; return a fresh CPU generator with ``seed``."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
