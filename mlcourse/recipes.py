"""The papers' experimental set-ups as functions: one place for hyperparameters.

The notebooks and the command line call these, so a table row in the book and the row a
researcher reproduces with ``python -m mlcourse reproduce`` come from the same code. Sizes come
from the budget; hyperparameters are the MAML paper's (section 5 and appendix A):

* sinusoid: MLP 1-40-40-1, alpha = 0.01, one inner step in meta-training, Adam beta = 1e-3,
  meta-batch 25, 70,000 iterations; evaluated after up to 10 steps.
* Omniglot 5-way: alpha = 0.4, one inner step, meta-batch 32, evaluated with 3 steps;
  20-way: alpha = 0.1, five inner steps (also at evaluation), meta-batch 16; 60,000 iterations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .algorithms import MAML
from .budget import Budget, get_budget
from .nn import MLP, ConvNet
from .published import published
from .tasks import Sinusoid
from .train import evaluate, meta_train
from .utils import default_device

SINUSOID = dict(inner_lr=0.01, inner_steps=1, eval_steps=10, outer_lr=1e-3)
OMNIGLOT = {
    5: dict(inner_lr=0.4, inner_steps=1, eval_steps=3, outer_lr=1e-3, meta_batch_divisor=1),
    20: dict(inner_lr=0.1, inner_steps=5, eval_steps=5, outer_lr=1e-3, meta_batch_divisor=2),
}
EVAL_QUERIES = 15  # query drawings per class at evaluation (tighter intervals than the 1 of training)
ALGORITHMS = ("maml", "fomaml")


def _algorithm(name: str, model, loss_fn, inner_lr, inner_steps):
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is unknown: allowed {', '.join(ALGORITHMS)}")
    return MAML(model, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, first_order=(name == "fomaml"))


def sinusoid_run(algorithm: str = "maml", shots: int = 10, budget: Budget | str | None = None, seed: int = 0,
                 device=None, checkpoint=None, progress: bool = True) -> dict:
    """Meta-train on sinusoids with K = ``shots`` and report MSE after 1 and 10 steps (600 tasks)."""
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    torch.manual_seed(seed)
    alg = _algorithm(algorithm, MLP([1, 40, 40, 1]), F.mse_loss, SINUSOID["inner_lr"], SINUSOID["inner_steps"])
    sampler = Sinusoid(shots=shots, queries=shots)
    history = meta_train(alg, sampler, budget.sinusoid_iterations, budget.sinusoid_meta_batch,
                         outer_lr=SINUSOID["outer_lr"], seed=seed, device=device, checkpoint=checkpoint,
                         progress=progress, desc=f"{algorithm} sinusoid K={shots}")
    test = Sinusoid(shots=shots, queries=100)
    results = {steps: evaluate(alg, test, budget.eval_tasks, inner_steps=steps) for steps in (1, SINUSOID["eval_steps"])}
    return {"algorithm": alg, "history": history, "results": results}


def omniglot_run(algorithm: str = "maml", ways: int = 5, shots: int = 1, budget: Budget | str | None = None,
                 seed: int = 0, device=None, root=None, protocol: str = "maml", checkpoint=None,
                 progress: bool = True) -> dict:
    """Meta-train the conv net on Omniglot N-way K-shot, evaluate on the test characters."""
    from .tasks import Omniglot  # imported here: reading Omniglot is only needed by this recipe

    if ways not in OMNIGLOT:
        raise ValueError(f"ways={ways} has no recipe: allowed {', '.join(map(str, OMNIGLOT))} (the MAML paper's)")
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    hp = OMNIGLOT[ways]
    torch.manual_seed(seed)
    alg = _algorithm(algorithm, ConvNet(ways), F.cross_entropy, hp["inner_lr"], hp["inner_steps"])
    train = Omniglot(ways, shots, budget.omniglot_queries, "train", root=root, protocol=protocol)
    val = Omniglot(ways, shots, EVAL_QUERIES, "val", root=root, protocol=protocol)
    test = Omniglot(ways, shots, EVAL_QUERIES, "test", root=root, protocol=protocol)
    meta_batch = max(1, budget.omniglot_meta_batch // hp["meta_batch_divisor"])
    history = meta_train(alg, train, budget.omniglot_iterations, meta_batch, outer_lr=hp["outer_lr"],
                         val_sampler=val, val_every=budget.val_every, val_tasks=budget.val_tasks,
                         val_inner_steps=hp["eval_steps"], seed=seed, device=device, checkpoint=checkpoint,
                         progress=progress, desc=f"{algorithm} omniglot {ways}-way {shots}-shot")
    result = evaluate(alg, test, budget.eval_tasks, inner_steps=hp["eval_steps"])
    return {"algorithm": alg, "history": history, "result": result,
            "published": published(algorithm, "omniglot", ways, shots)}
