"""Helpers the tests share: a model's parameters as one flat vector (finite differences), and small
Omniglot archives in the official layout (data loading and its errors)."""
import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def set_flat(model, flat):
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()


def fake_archive(path: Path, top: str, chars: dict, seed: int = 0):
    """A small zip in the official layout; chars maps 'alphabet/characterNN' -> number of drawings."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as zf:
        for c, n in chars.items():
            for j in range(n):
                bits = rng.random((105, 105)) > 0.1  # white background, black strokes
                buf = io.BytesIO()
                Image.fromarray(bits).convert("1").save(buf, format="PNG")
                zf.writestr(f"{top}/{c}/{j:04d}_{j + 1:02d}.png", buf.getvalue())
