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

from .algorithms import IMAML, LLAMA, MAML, Pretrained, Reptile
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
# Reptile (Nichol et al., 2018, appendix A and its code): inner Adam with beta1 = 0, five steps on
# mini-batches of 10 drawn by cycling through 10 shots per class; outer SGD step 1.0 annealed
# linearly to 0; meta-batch 5; 100,000 iterations. Evaluation: 50 steps on mini-batches of 5.
REPTILE_OMNIGLOT = {
    5: dict(inner_lr=1e-3, inner_optimizer="adam", inner_steps=5, inner_batch=10, train_shots=10, meta_batch=5,
            outer_step_size=1.0, outer_step_size_final=0.0, eval_inner_steps=50, eval_inner_batch=5),
}
# Reptile on sinusoids: our choice (the paper gives no table for it): SGD with MAML's alpha = 0.01,
# five steps (alpha = 0.02 made first-order runs diverge on some tasks).
REPTILE_SINUSOID = dict(inner_lr=0.01, inner_optimizer="sgd", inner_steps=5, outer_step_size=1.0,
                        outer_step_size_final=0.0)
EVAL_QUERIES = 15  # query drawings per class at evaluation (tighter intervals than the 1 of training)
ALGORITHMS = ("maml", "fomaml", "pretrained", "reptile", "llama", "imaml-gd", "imaml-hf")
# LLAMA (Grant et al., 2018, section 5.2): MAML's hyperparameters plus tau = 0.001 and eta = 1e-6.
LLAMA_PRIOR = dict(prior_precision=1e-3, eta=1e-6, curvature="kfac")
# iMAML on Omniglot (Rajeswaran et al., 2019, section 5): lambda = 2, 5 CG steps for the meta-gradient;
# the GD inner solver takes 16 steps (5-way). The paper gives no inner step size: 0.1 is ours, as
# are the 3 Newton steps of the Hessian-free solver (5 CG steps each, with a line search).
IMAML_OMNIGLOT = {"imaml-gd": dict(lam=2.0, cg_steps=5, inner_solver="gd", inner_steps=16, inner_lr=0.1),
                  "imaml-hf": dict(lam=2.0, cg_steps=5, inner_solver="newton_cg", inner_steps=3)}


def make_algorithm(name: str, model, loss_fn, inner_lr, inner_steps):
    """``maml``, ``fomaml`` (first-order MAML), ``pretrained`` (joint training, then fine-tuning) or
    ``llama`` (MAML plus the Laplace term, the paper's prior), ``imaml-gd`` or ``imaml-hf`` (implicit
    MAML with the Omniglot settings of ``IMAML_OMNIGLOT``). Reptile has recipes of its own."""
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is unknown: allowed {', '.join(ALGORITHMS)}")
    if name == "pretrained":
        return Pretrained(model, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps)
    if name in IMAML_OMNIGLOT:  # its own step counts: the proximal inner problem is solved, not unrolled
        return IMAML(model, loss_fn, **IMAML_OMNIGLOT[name])
    if name == "llama":
        return LLAMA(model, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, **LLAMA_PRIOR)
    if name == "reptile":
        raise ValueError("Reptile has its own recipes: reptile_omniglot_run and sinusoid_run('reptile')")
    return MAML(model, loss_fn, inner_lr=inner_lr, inner_steps=inner_steps, first_order=(name == "fomaml"))


def sinusoid_run(algorithm: str = "maml", shots: int = 10, budget: Budget | str | None = None, seed: int = 0,
                 device=None, checkpoint=None, progress: bool = True, eval_steps=(1, 10)) -> dict:
    """Meta-train on sinusoids with K = ``shots``; query MSE after each of ``eval_steps`` steps."""
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    torch.manual_seed(seed)
    if algorithm in IMAML_OMNIGLOT:
        raise ValueError(f"{algorithm} has no sinusoid recipe: its settings are Omniglot's (see chapter 5)")
    if algorithm == "reptile":
        alg = Reptile(MLP([1, 40, 40, 1]), F.mse_loss, **REPTILE_SINUSOID, seed=seed)
    else:
        alg = make_algorithm(algorithm, MLP([1, 40, 40, 1]), F.mse_loss, SINUSOID["inner_lr"], SINUSOID["inner_steps"])
    sampler = Sinusoid(shots=shots, queries=shots)
    history = meta_train(alg, sampler, budget.sinusoid_iterations, budget.sinusoid_meta_batch,
                         outer_lr=SINUSOID["outer_lr"], seed=seed, device=device, checkpoint=checkpoint,
                         progress=progress, desc=f"{algorithm} sinusoid K={shots}")
    test = Sinusoid(shots=shots, queries=100)
    results = {steps: evaluate(alg, test, budget.eval_tasks, inner_steps=steps) for steps in eval_steps}
    return {"algorithm": alg, "history": history, "results": results}


def omniglot_run(algorithm: str = "maml", ways: int = 5, shots: int = 1, budget: Budget | str | None = None,
                 seed: int = 0, device=None, root=None, protocol: str = "maml", checkpoint=None,
                 progress: bool = True, eval_steps=None) -> dict:
    """Meta-train the conv net on Omniglot N-way K-shot, evaluate on the test characters.

    Returns ``result`` (after the paper's number of test-time steps) and ``results``: one
    evaluation per entry of ``eval_steps`` (for adaptation curves; default: just that one).
    """
    from .tasks import Omniglot  # imported here: reading Omniglot is only needed by this recipe

    if algorithm == "reptile":
        if eval_steps:
            raise ValueError("eval_steps is not used for Reptile: it adapts with its recipe's 50 steps")
        run = reptile_omniglot_run(ways, (shots,), budget, seed=seed, device=device, root=root, protocol=protocol,
                                   checkpoint=checkpoint, progress=progress, transductive=(False,))
        key = (shots, False)  # the paper's headline row is non-transductive
        return {**run, "result": run["results"][key], "published": run["published"][key]}
    if ways not in OMNIGLOT:
        raise ValueError(f"ways={ways} has no recipe: allowed {', '.join(map(str, OMNIGLOT))} (the MAML paper's)")
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    hp = OMNIGLOT[ways]
    torch.manual_seed(seed)
    alg = make_algorithm(algorithm, ConvNet(ways), F.cross_entropy, hp["inner_lr"], hp["inner_steps"])
    train = Omniglot(ways, shots, budget.omniglot_queries, "train", root=root, protocol=protocol)
    val = Omniglot(ways, shots, EVAL_QUERIES, "val", root=root, protocol=protocol)
    test = Omniglot(ways, shots, EVAL_QUERIES, "test", root=root, protocol=protocol)
    meta_batch = max(1, budget.omniglot_meta_batch // hp["meta_batch_divisor"])
    iterations = budget.omniglot_iterations if ways == 5 else budget.omniglot20_iterations
    history = meta_train(alg, train, iterations, meta_batch, outer_lr=hp["outer_lr"],
                         val_sampler=val, val_every=budget.val_every, val_tasks=budget.val_tasks,
                         val_inner_steps=None if algorithm in IMAML_OMNIGLOT else hp["eval_steps"], seed=seed, device=device, checkpoint=checkpoint,
                         progress=progress, desc=f"{algorithm} omniglot {ways}-way {shots}-shot")
    # iMAML adapts with its own solver settings (None); the MAML family with the paper's test-time steps.
    test_steps = None if algorithm in IMAML_OMNIGLOT else hp["eval_steps"]
    results = {k: evaluate(alg, test, budget.eval_tasks, inner_steps=k) for k in [*(eval_steps or ()), test_steps]}
    return {"algorithm": alg, "history": history, "result": results[test_steps], "results": results,
            "published": published(algorithm, "omniglot", ways, shots)}


def omniglot_runs_accuracy(algorithm, root=None, inner_steps: int | None = None) -> dict:
    """Accuracy on Lake's 20 one-shot runs (20-way 1-shot on the evaluation alphabets).

    ``algorithm`` must have been meta-trained 20-way; with ``protocol="lake"`` its training
    never saw these alphabets. Returns mean and 95% interval over the 20 runs.
    """
    from .tasks import OmniglotRuns
    from .train import confidence_interval, score_batch

    batch = OmniglotRuns(root=root).batch().to(next(algorithm.model.parameters()).device)
    steps = OMNIGLOT[20]["eval_steps"] if inner_steps is None else inner_steps
    metric, scores = score_batch(algorithm, batch, steps)
    mean, ci = confidence_interval(scores)
    return {"metric": metric, "mean": mean, "ci95": ci, "num_tasks": len(scores), "scores": scores}


def reptile_omniglot_run(ways: int = 5, shots=(1, 5), budget: Budget | str | None = None, seed: int = 0, device=None,
                         root=None, protocol: str = "maml", checkpoint=None, progress: bool = True,
                         eval_tasks: int | None = None, transductive=(False, True)) -> dict:
    """Meta-train Reptile on Omniglot once, then evaluate K-shot for every K in ``shots`` and every
    setting in ``transductive`` (as in the paper, one model serves every K: it trains on 10 shots).

    Returns ``results`` and ``published``, both keyed by ``(shots, transductive)``.
    """
    from .tasks import Omniglot

    if ways not in REPTILE_OMNIGLOT:
        raise ValueError(f"ways={ways} has no Reptile recipe: allowed {', '.join(map(str, REPTILE_OMNIGLOT))}")
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    hp = dict(REPTILE_OMNIGLOT[ways])
    train_shots, meta_batch = hp.pop("train_shots"), hp.pop("meta_batch")
    torch.manual_seed(seed)
    alg = Reptile(ConvNet(ways), F.cross_entropy, **hp, seed=seed)
    # One query drawing per class: Reptile never uses it to learn, only to report a loss.
    train = Omniglot(ways, train_shots, 1, "train", root=root, protocol=protocol)
    history = meta_train(alg, train, budget.reptile_iterations, meta_batch, seed=seed, device=device,
                         checkpoint=checkpoint, progress=progress, desc=f"reptile omniglot {ways}-way")
    results, reference, before = {}, {}, alg.transductive
    for k in shots:
        test = Omniglot(ways, k, EVAL_QUERIES, "test", root=root, protocol=protocol)
        for setting in transductive:
            alg.transductive = setting
            results[(k, setting)] = evaluate(alg, test, eval_tasks or budget.eval_tasks)
            name = "reptile-transductive" if setting else "reptile"
            reference[(k, setting)] = published(name, "omniglot", ways, k)
    alg.transductive = before
    return {"algorithm": alg, "history": history, "results": results, "published": reference}
