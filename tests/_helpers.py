"""Helpers the tests share: a model's parameters as one flat vector, for finite differences."""
import torch


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def set_flat(model, flat):
    i = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()
