"""Small shared helpers: argument validation, device choice and seeding."""
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


def check_int(name: str, value, low: int, high: int | None = None, why: str = "") -> int:
    """Return ``value`` as an int, or raise ValueError naming it and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        extra = f" ({why})" if why else ""
        raise ValueError(f"{name}={value} is out of range: allowed {allowed}{extra}")
    return value


def check_positive(name: str, value) -> float:
    """Return ``value`` as a float, or raise ValueError if it is not a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (v > 0) or v == float("inf"):
        raise ValueError(f"{name}={value!r} is out of range: allowed a finite number > 0")
    return v
