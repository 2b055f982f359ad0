"""The papers' experimental set-ups as one table: a new method is one row.

``RECIPES[method, benchmark, ways]`` names the algorithm class, its hyperparameters (with the
paper and section they come from), and the sampler and training settings. :func:`build`
turns a row into an algorithm and its samplers; :func:`run` meta-trains and evaluates it.
The notebooks, the command line (``python -m mlcourse reproduce``), profiling and the
benchmarks all go through these two functions, so a table row in the book and the row a
researcher reproduces come from the same code. Sizes (iterations, meta-batch, test tasks)
come from the budget; a row may name the budget field it uses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .algorithms import IMAML, LLAMA, MAML, Pretrained, Reptile
from .budget import Budget, get_budget
from .nn import MLP, ConvNet
from .published import published
from .tasks import Multimodal, Sinusoid
from .train import check_outer_lr_decay, evaluate, meta_train

EVAL_QUERIES = 15  # query drawings per class at evaluation (tighter intervals than the few of training)
SINUSOID_TEST_QUERIES = 100  # query points per sinusoid test task


@dataclass(frozen=True)
class Recipe:
    """One row: how ``method`` is run on ``benchmark`` (``ways`` classes; None for regression)."""

    method: str
    benchmark: str
    ways: int | None
    algorithm: type
    hyperparameters: dict
    source: str
    outer_lr: float = 1e-3
    iterations: str = "omniglot_iterations"   # the budget field giving the number of meta-iterations
    meta_batch: str | int = "omniglot_meta_batch"  # a budget field, or a fixed number of tasks
    meta_batch_divisor: int = 1               # 20-way runs halve the 5-way meta-batch
    meta_batch_multiplier: int = 1            # multimodal runs: the budget's tasks per mode times the modes
    train_shots: int | None = None            # train on this many shots whatever K is tested (Reptile)
    train_queries: int | dict | None = None   # query examples per class in training (None: the budget's;
                                              # a dict: by the number of shots trained, as Relation Networks)
    train_ways: int | None = None             # classes per training task (None: ways; ProtoNets train 60-way)
    transductive: bool = True                 # how batch norm sees the query set at test time
    validate: bool = True                     # evaluate on the validation split during training
    seeded: bool = False                      # the class takes ``seed`` (its own generator)
    network: Callable | None = None           # network(benchmark) -> the model (None: the benchmark's)
    loss: Callable | None = None              # loss_fn(prediction, target) (None: the benchmark's)
    notes: tuple = field(default=())

    def key(self):
        return self.method, self.benchmark, self.ways


# The MAML paper (Finn et al., 2017), section 5.1 and appendix A.1: sinusoid MLP 1-40-40-1,
# alpha = 0.01, one inner step, Adam beta = 1e-3, meta-batch 25, 70,000 iterations; tested after 10 steps.
# Section 5.2 and appendix A.1: Omniglot 5-way alpha = 0.4, one inner step, meta-batch 32, tested with 3
# steps; 20-way alpha = 0.1, five inner steps (also at test time), meta-batch 16; 60,000 iterations.
_MAML_SINUSOID = dict(inner_lr=0.01, inner_steps=1, eval_inner_steps=10)
_MAML_OMNIGLOT = {5: dict(inner_lr=0.4, inner_steps=1, eval_inner_steps=3),
                  20: dict(inner_lr=0.1, inner_steps=5, eval_inner_steps=5)}
_SIN = dict(iterations="sinusoid_iterations", meta_batch="sinusoid_meta_batch", validate=False)
_OMNI = {5: dict(iterations="omniglot_iterations"), 20: dict(iterations="omniglot20_iterations", meta_batch_divisor=2)}
_MAML_SOURCE = "Finn et al. 2017, sec. 5 and app. A.1"


def _maml_family() -> list[Recipe]:
    rows = []
    for method, cls, extra, source in (
            ("maml", MAML, {}, _MAML_SOURCE),
            ("fomaml", MAML, {"first_order": True}, _MAML_SOURCE + " (first-order approximation, sec. 5.2)"),
            ("pretrained", Pretrained, {}, _MAML_SOURCE + " (the 'pretrained' baseline, sec. 5.1)")):
        rows.append(Recipe(method, "sinusoid", None, cls, {**_MAML_SINUSOID, **extra}, source, **_SIN))
        for ways in (5, 20):
            rows.append(Recipe(method, "omniglot", ways, cls, {**_MAML_OMNIGLOT[ways], **extra}, source,
                               **_OMNI[ways]))
    return rows


# LLAMA (Grant et al., 2018, sec. 5.2): MAML's hyperparameters plus tau = 0.001 and eta = 1e-6 (K-FAC).
# On sinusoids the paper gives no prior: tau = 300, sigma^2 = 0.01, eta = 1e-3 are ours (chapter 4 says why).
_LLAMA_OMNIGLOT = dict(prior_precision=1e-3, eta=1e-6, curvature="kfac")
_LLAMA_SINUSOID = dict(prior_precision=300.0, eta=1e-3, noise_variance=0.01, curvature="kfac")


def _llama() -> list[Recipe]:
    source = "Grant et al. 2018, sec. 5.2"
    rows = [Recipe("llama", "sinusoid", None, LLAMA, {**_MAML_SINUSOID, **_LLAMA_SINUSOID},
                   "ours (chapter 4): the paper gives no sinusoid prior", **_SIN)]
    for ways in (5, 20):
        rows.append(Recipe("llama", "omniglot", ways, LLAMA, {**_MAML_OMNIGLOT[ways], **_LLAMA_OMNIGLOT}, source,
                           **_OMNI[ways]))
    return rows


# Reptile (Nichol et al., 2018, app. A and its code): inner Adam with beta1 = 0, five steps on mini-batches
# of 10 drawn by cycling through 10 shots per class; outer SGD step 1.0 annealed linearly to 0; meta-batch 5;
# 100,000 iterations; tested with 50 steps on mini-batches of 5, non-transductively (the headline row).
# On sinusoids (no table in the paper): SGD with MAML's alpha = 0.01, five steps (ours).
_REPTILE_OMNIGLOT = dict(inner_lr=1e-3, inner_optimizer="adam", inner_steps=5, inner_batch=10,
                         outer_step_size=1.0, outer_step_size_final=0.0, eval_inner_steps=50, eval_inner_batch=5)
_REPTILE_SINUSOID = dict(inner_lr=0.01, inner_optimizer="sgd", inner_steps=5, outer_step_size=1.0,
                         outer_step_size_final=0.0, eval_inner_steps=10)


def _reptile() -> list[Recipe]:
    return [
        Recipe("reptile", "sinusoid", None, Reptile, _REPTILE_SINUSOID,
               "ours: MAML's alpha with five SGD steps (alpha = 0.02 diverged)", seeded=True, **_SIN),
        Recipe("reptile", "omniglot", 5, Reptile, _REPTILE_OMNIGLOT, "Nichol et al. 2018, app. A, Table 3",
               iterations="reptile_iterations", meta_batch=5, train_shots=10, train_queries=1, transductive=False,
               validate=False, seeded=True),
    ]


# iMAML on Omniglot (Rajeswaran et al., 2019, sec. 5). The paper's settings are IMAML_PAPER: lambda = 2, 5 CG
# steps for the meta-gradient, 16 GD steps (5-way) of 0.1 (the step size is the authors' code's; the paper gives
# none) or Hessian-free Newton steps (3 of them, 5 CG steps each, with a line search: ours). On this batch-
# normalised conv net they learn slowly (chapter 5, section 5.7): the proximal solution at lambda = 2 moves phi
# too little (MAML's own trained theta adapted that way scores about 10 points below MAML's 3 steps of 0.4).
# iMAML-GD's row therefore uses lambda = 0.5 and 5 GD steps of 0.4. iMAML-HF's uses lambda = 0.05 and 3 Gauss-
# Newton steps with Levenberg-Marquardt damping eta = 2, each step doubled up to twice while G keeps falling, and
# 10 CG steps for the meta-gradient (5 left a median residual of 0.2 at lambda = 0.1). Measured at 100 iterations
# (issue 12; chapter 5): lambda = 0.5 with undoubled steps reached 69.8% against MAML's 75.5%, lambda = 0.05 with
# doubled steps 76.2%. Gauss-Newton curvature is
# ours too: the support loss's Hessian has eigenvalues far below -lambda, so I + H/lambda is indefinite and CG
# fails (chapter 5). Tested with the same solver settings.
IMAML_PAPER = {"imaml-gd": dict(lam=2.0, inner_steps=16, inner_lr=0.1, cg_steps=5),
               "imaml-hf": dict(lam=2.0, inner_steps=3, cg_steps=5, newton_damping=0.0,
                                newton_expansions=0)}  # undamped steps of length at most 1
_IMAML = {"imaml-gd": dict(lam=0.5, cg_steps=5, inner_solver="gd", inner_steps=5, inner_lr=0.4,
                           curvature="gauss_newton"),
          "imaml-hf": dict(lam=0.05, cg_steps=10, inner_solver="newton_cg", inner_steps=3, newton_damping=2.0,
                           newton_expansions=2, curvature="gauss_newton")}


def _imaml() -> list[Recipe]:
    return [Recipe(name, "omniglot", 5, IMAML, hp,
                   "Rajeswaran et al. 2019, sec. 5 (lambda, step sizes and Gauss-Newton curvature ours)")
            for name, hp in _IMAML.items()]


# BMAML on sinusoids (Yoon et al., 2018, sec. 3 and 5, and the authors' code, github.com/jsikyoon/bmaml):
# M = 10 particles, n = s = 1 SVGD steps of size 1e-3 for follower and leader, the median-heuristic RBF
# kernel, Adam 1e-3 (their decay of it left out). The authors learn the noise precision under a Gamma prior
# (and a weight precision): a fixed sigma^2 = 0.05 and no weight prior are ours (sigma^2 = 0.01 diverged in 10
# test steps, 0.1 and 0.5 learned slower), as are MAML's 10 test-time steps. EMAML, their baseline: M = 10 MAMLs
# with MAML's sinusoid settings (ours).
_BMAML_SINUSOID = dict(inner_lr=1e-3, inner_steps=1, leader_steps=1, num_particles=10, noise_variance=0.05,
                       eval_inner_steps=10)


def _bmaml() -> list[Recipe]:
    from .algorithms import BMAML, EMAML

    return [
        Recipe("bmaml", "sinusoid", None, BMAML, _BMAML_SINUSOID,
               "Yoon et al. 2018, sec. 5 and the authors' code (sigma^2 ours)", **_SIN),
        Recipe("emaml", "sinusoid", None, EMAML, {**_MAML_SINUSOID, "num_particles": 10},
               "Yoon et al. 2018, sec. 5 (M = 10, the authors' code); inner loop ours: MAML's", **_SIN),
    ]


# PLATIPUS (Finn, Xu and Levine, 2018): MAML's sinusoid settings for the inner loop (alpha = 0.01, one step in
# training, ten at test time); the KL weight 0.1 and the initial variances 0.01 are ours (the paper's sinusoid-and-
# line experiment is chapter 7's).
_PLATIPUS_SINUSOID = dict(_MAML_SINUSOID, kl_weight=0.1, init_variance=1e-2)


def _platipus() -> list[Recipe]:
    from .algorithms import PLATIPUS

    return [Recipe("platipus", "sinusoid", None, PLATIPUS, _PLATIPUS_SINUSOID,
                   "Finn et al. 2018, Algorithms 1-2 (kl_weight and variances ours)", seeded=True, **_SIN)]


# MAML++ (Antoniou, Edwards and Storkey, 2019, sec. 4, and the authors' code, github.com/AntreasAntoniou/
# HowToTrainYourMAMLPytorch, experiment_config/omniglot_maml++-omniglot_*.json): five inner steps in training and
# at test time, their per-layer per-step step sizes (LSLR) started at 0.1; outer Adam 1e-3 cosine-annealed to
# 1e-5 (CA: factor 0.01); meta-batch 8 tasks (5- and 20-way) with one query drawing per class; 100 "epochs" of 500
# iterations. MSL anneals over the first 10 epochs (the configs' multi_step_loss_num_epochs) and DA is first order
# for the first 50 (sec. 4; the released configs train second order throughout): written as fractions (0.1, 0.5)
# of the budget's iterations, so that every budget keeps the schedules' shape. The authors' net max-pools; ours is
# MAML's strided one, so that the comparison with MAML isolates the six fixes. Tested transductively, as in the paper.
_MAML_PLUS_PLUS = dict(inner_lr=0.1, inner_steps=5, msl_annealing_fraction=0.1, first_order_fraction=0.5,
                       min_outer_lr_factor=0.01)


def _maml_plus_plus() -> list[Recipe]:
    from .algorithms import MAMLPlusPlus

    source = "Antoniou et al. 2019, sec. 4 and the authors' Omniglot configs (net: MAML's)"
    return [Recipe("maml++", "omniglot", ways, MAMLPlusPlus, _MAML_PLUS_PLUS, source, meta_batch=8,
                   train_queries=1, iterations=_OMNI[ways]["iterations"]) for ways in (5, 20)]


# Meta-SGD (Li et al., 2017, sec. 4): one inner step phi = theta - alpha * grad, in training and at test time, with
# alpha as large as theta, drawn uniformly from [0.005, 0.1] (stated for regression; used for Omniglot too) and
# learned with theta by Adam 1e-3. Networks, meta-batches and iterations: MAML's (the budget's). No sinusoid row:
# the command line scores every sinusoid row after 1 and 10 steps, and an alpha learned for one step (from up to
# 0.1, ten times MAML's sinusoid alpha) diverges over 10 (non-finite on 11 of 25 tasks after the smoke budget).
_META_SGD = dict(init_inner_lr=[0.005, 0.1], inner_steps=1)


def _meta_sgd() -> list[Recipe]:
    from .algorithms import MetaSGD

    source = "Li et al. 2017, sec. 4 (one step, alpha from [0.005, 0.1]); sizes MAML's"
    return [Recipe("meta-sgd", "omniglot", ways, MetaSGD, _META_SGD, source, **_OMNI[ways]) for ways in (5, 20)]


# MMAML (Vuorio et al., 2019, sec. 5.1 and the authors' regression code, github.com/vuoristo/MMAML-Regression):
# the task network is an MLP 1-100-100-100-1; five inner steps of alpha = 0.001 (MMAML, MAML and Multi-MAML alike);
# Adam 1e-3; 25 tasks of each family per meta-batch; 70,000 iterations; a bidirectional LSTM encoder (2 layers of 40
# units each way) over the support points sorted by x; FiLM (or softmax) generators. The LSTM learner is the same
# modulated network with no inner step. The modulated learners clip as the authors' code does: inner gradients
# entry by entry to [-10, 10], outer gradient norms to 2 (task network and modulation network apart); without it
# the 5-mode run diverged. Left out: the authors' "bias transformation" (20 learned extra inputs) and their
# clipping of MAML's outer gradient (our MAML has none).
_MMAML_REGRESSION = dict(inner_lr=1e-3, inner_steps=5)
_MMAML_MODULATED = dict(_MMAML_REGRESSION, encoder="lstm", inner_grad_clip=10.0, grad_clip=2.0)
MULTIMODAL_BENCHMARKS = tuple(f"multimodal-{n}" for n in (2, 3, 5))


def _mmaml() -> list[Recipe]:
    from .algorithms import MMAML, MultiMAML

    source = "Vuorio et al. 2019, sec. 5.1 and the authors' code (bias transformation left out)"
    rows = []
    for benchmark in MULTIMODAL_BENCHMARKS:
        modes = int(benchmark.rpartition("-")[2])
        sizes = dict(iterations="multimodal_iterations", meta_batch="multimodal_tasks_per_mode",
                     meta_batch_multiplier=modes, validate=False)
        rows += [
            Recipe("maml", benchmark, None, MAML, _MMAML_REGRESSION, source, **sizes),
            Recipe("multi-maml", benchmark, None, MultiMAML, {**_MMAML_REGRESSION, "num_modes": modes},
                   source + " (an oracle: told each task's family)", **sizes),
            Recipe("lstm-learner", benchmark, None, MMAML, {**_MMAML_MODULATED, "inner_steps": 0},
                   source + " (modulation only, no inner step)", **sizes),
            Recipe("mmaml", benchmark, None, MMAML, {**_MMAML_MODULATED, "modulation": "film"}, source, **sizes),
            Recipe("mmaml-softmax", benchmark, None, MMAML, {**_MMAML_MODULATED, "modulation": "softmax"}, source,
                   **sizes),
        ]
    return rows


def embedding_network(benchmark: str) -> nn.Module:
    """The benchmark's network without its output layer, for learners that put their own head on it: the
    conv net's embedding (its 64 features averaged over space), or the sinusoid MLP's 40 ReLU features."""
    if benchmark == "omniglot":
        return ConvNet(None)
    if benchmark == "sinusoid":
        return nn.Sequential(MLP([1, 40, 40]), nn.ReLU())
    raise ValueError(f"no embedding network for benchmark {benchmark!r}: allowed omniglot, sinusoid")


EMBEDDING_FEATURES = {"omniglot": 64, "sinusoid": 40}

# The wider family (chapter 10). Metric-based learners classify by comparing embeddings and have no
# regression form, so they have no sinusoid row (recipe() then says which rows exist); R2-D2's ridge head,
# ANIL's head-only inner loop and SNAIL's sequence model all regress, so they have one. Rows without an inner
# loop have inner_steps = 0 (the command line's sinusoid scores after 1 and 10 steps equal the one at 0).
# ProtoNets (Snell et al. 2017, sec. 3.1): Euclidean distance; training episodes of 60 classes with 5 queries
# each, one episode per update (for the 5- and 20-way tests alike); Adam 1e-3 halved every 2000 episodes.
_PROTONET = dict(inner_steps=0, lr_halving_every=2000)
# Matching Networks (Vinyals et al. 2016, sec. 4.1): training episodes like the test's (N-way, K-shot); without
# full-context embeddings. Optimiser (Adam 1e-3), meta-batch and iterations: ours (MAML's budget).
_MATCHING = dict(inner_steps=0)
# Relation Networks (Sung et al. 2018, sec. 4.1): one episode per update with 19 queries per class (5-way
# 1-shot) or 10 (20-way 1-shot); Adam 1e-3; MSE to the one-hot labels; g's last hidden layer of 8 units.
_RELATION = dict(inner_steps=0, features=64, hidden=8)
# sec. 4.1: 19 queries per class for 5-way 1-shot, 15 for 5-way 5-shot, 10 for 20-way 1-shot, 5 for 20-way 5-shot
_RELATION_QUERIES = {5: {1: 19, 5: 15}, 20: {1: 10, 5: 5}}
# R2-D2 (Bertinetto et al. 2019, sec. 3.2): ridge head through the Woodbury identity; scale, offset and lambda
# meta-learned (starts lambda = 1, scale = 1: ours); our conv net's embedding in place of the paper's larger
# features; Adam 1e-3, meta-batch and iterations: ours (MAML's budget).
_R2D2 = dict(inner_steps=0, init_lambda=1.0, learn_lambda=True)
# Proto-MAML (Triantafillou et al. 2020, sec. 3): the paper's experiments are on Meta-Dataset, so the inner
# loop here is MAML's Omniglot one (Finn et al. 2017, app. A.1), second order (the paper's fo-Proto-MAML is
# first order for Meta-Dataset's cost): the comparison with MAML isolates the prototype initialisation.
# ANIL (Raghu et al. 2020, sec. 4): MAML's hyperparameters, the inner loop on the output layer only.
# SNAIL (Mishra et al. 2018, sec. 4.1): each query is read after the labelled support set; our sequence model
# is smaller than the paper's (nn.SNAILSequence); Adam 1e-3, meta-batch and iterations: ours (MAML's budget).


def _family() -> list[Recipe]:
    from .algorithms import ANIL, R2D2, SNAIL, MatchingNet, ProtoMAML, ProtoNet, RelationNet
    from .algorithms.relation_net import relation_mse

    rows = [
        Recipe("r2d2", "sinusoid", None, R2D2, _R2D2, "Bertinetto et al. 2019, sec. 3.2 (ridge regression as "
               "its own regression head; sizes MAML's)", network=embedding_network, **_SIN),
        Recipe("anil", "sinusoid", None, ANIL, _MAML_SINUSOID, "Raghu et al. 2020, sec. 4 (MAML's settings)",
               **_SIN),
        Recipe("snail", "sinusoid", None, SNAIL, dict(inner_steps=0, features=40, outputs=1),
               "Mishra et al. 2018, sec. 3 (tokens [f(x), y, 1]; small sequence model and sizes ours)",
               network=embedding_network, **_SIN),
    ]
    for ways in (5, 20):
        iterations = _OMNI[ways]["iterations"]
        rows += [
            Recipe("protonet", "omniglot", ways, ProtoNet, _PROTONET, "Snell et al. 2017, sec. 3.1",
                   network=embedding_network, train_ways=60, train_queries=5, meta_batch=1, iterations=iterations),
            Recipe("matching-net", "omniglot", ways, MatchingNet, _MATCHING,
                   "Vinyals et al. 2016, sec. 4.1 (no full-context embeddings; optimiser and sizes ours)",
                   network=embedding_network, **_OMNI[ways]),
            Recipe("relation-net", "omniglot", ways, RelationNet, _RELATION,
                   "Sung et al. 2018, sec. 4.1 (g on feature vectors, not maps)", network=embedding_network,
                   loss=relation_mse, train_queries=_RELATION_QUERIES[ways], meta_batch=1, iterations=iterations),
            Recipe("r2d2", "omniglot", ways, R2D2, _R2D2, "Bertinetto et al. 2019, sec. 3.2 (net and sizes ours)",
                   network=embedding_network, **_OMNI[ways]),
            Recipe("protomaml", "omniglot", ways, ProtoMAML, _MAML_OMNIGLOT[ways],
                   "Triantafillou et al. 2020, sec. 3, with MAML's Omniglot inner loop (Finn et al. 2017, "
                   "app. A.1)", network=embedding_network, **_OMNI[ways]),
            Recipe("anil", "omniglot", ways, ANIL, _MAML_OMNIGLOT[ways], "Raghu et al. 2020, sec. 4 (MAML's "
                   "settings)", **_OMNI[ways]),
            Recipe("snail", "omniglot", ways, SNAIL, dict(inner_steps=0, features=64, outputs=ways),
                   "Mishra et al. 2018, sec. 4.1 (small sequence model and sizes ours)", network=embedding_network,
                   **_OMNI[ways]),
        ]
    return rows


RECIPES: dict[tuple, Recipe] = {r.key(): r for r in [*_maml_family(), *_llama(), *_reptile(), *_imaml(),
                                                     *_bmaml(), *_platipus(), *_maml_plus_plus(), *_meta_sgd(),
                                                     *_mmaml(), *_family()]}
METHODS = tuple(dict.fromkeys(r.method for r in RECIPES.values()))
BENCHMARKS = ("omniglot", "sinusoid", *MULTIMODAL_BENCHMARKS)
REGRESSION = ("sinusoid", *MULTIMODAL_BENCHMARKS)  # benchmarks scored by MSE, with no ways


def recipe(method: str, benchmark: str, ways: int | None = 5) -> Recipe:
    """The row for (method, benchmark, ways), or a ValueError listing what exists."""
    ways = None if benchmark in REGRESSION else ways
    row = RECIPES.get((method, benchmark, ways))
    if row is None:
        if method not in METHODS:
            raise ValueError(f"method {method!r} is unknown: allowed {', '.join(METHODS)}")
        if benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark {benchmark!r} is unknown: allowed {', '.join(BENCHMARKS)}")
        have = [f"{r.benchmark}" + (f" {r.ways}-way" if r.ways else "")
                for r in sorted(RECIPES.values(), key=lambda r: (r.benchmark, r.ways or 0)) if r.method == method]
        raise ValueError(f"{method} has no recipe for {benchmark}" + (f" {ways}-way" if ways else "")
                         + f": allowed {', '.join(have)}")
    return row


def _modes(benchmark: str) -> int:
    return int(benchmark.rpartition("-")[2])


def make_model(benchmark: str, ways: int | None):
    """The benchmark's network: the MLP 1-40-40-1 (sinusoid), the MLP 1-100-100-100-1 with FiLM layers
    (multimodal regression) or the 4-block conv net (Omniglot)."""
    if benchmark == "sinusoid":
        return MLP([1, 40, 40, 1])
    if benchmark in MULTIMODAL_BENCHMARKS:
        return MLP([1, 100, 100, 100, 1], film=True)
    return ConvNet(ways)


def loss_function(benchmark: str):
    return F.mse_loss if benchmark in REGRESSION else F.cross_entropy


def build_algorithm(method: str, benchmark: str, ways: int | None = 5, seed: int = 0, **overrides):
    """The row's algorithm on a fresh model; ``overrides`` replace hyperparameters (e.g. inner_steps)."""
    row = recipe(method, benchmark, ways)
    hyper = {**row.hyperparameters, **overrides}
    if row.seeded:
        hyper["seed"] = seed
    model = row.network(benchmark) if row.network is not None else make_model(benchmark, row.ways)
    return row.algorithm(model, row.loss or loss_function(benchmark), transductive=row.transductive, **hyper)


def test_sampler(benchmark: str, ways: int | None, shots: int, root=None, protocol: str = "maml",
                 split: str = "test"):
    """The tasks a row is scored on: K = ``shots``, 15 queries per class (Omniglot) or 100 points."""
    if benchmark == "sinusoid":
        return Sinusoid(shots=shots, queries=SINUSOID_TEST_QUERIES)
    if benchmark in MULTIMODAL_BENCHMARKS:
        return Multimodal.paper(_modes(benchmark), shots=shots, queries=SINUSOID_TEST_QUERIES)
    from .tasks import Omniglot  # reading Omniglot is only needed here

    return Omniglot(ways, shots, EVAL_QUERIES, split, root=root, protocol=protocol)


def build(method: str, benchmark: str, ways: int | None = 5, shots: int = 1, budget: Budget | str | None = None,
          seed: int = 0, root=None, protocol: str = "maml", iterations: int | None = None,
          meta_batch: int | None = None, outer_lr_decay=(), **overrides) -> dict:
    """Everything a run needs, checked before any training: ``{"recipe", "algorithm", "train", "val",
    "test", "iterations", "meta_batch", "budget", "settings"}`` (settings: what a checkpoint records).
    ``outer_lr_decay``: step decays of the outer step size, see :func:`mlcourse.train.check_outer_lr_decay`."""
    row = recipe(method, benchmark, ways)
    outer_lr_decay = check_outer_lr_decay(outer_lr_decay)
    budget = budget if isinstance(budget, Budget) else get_budget(budget)
    iterations = getattr(budget, row.iterations) if iterations is None else iterations
    if meta_batch is None:
        meta_batch = row.meta_batch if isinstance(row.meta_batch, int) else getattr(budget, row.meta_batch)
        meta_batch = max(1, meta_batch * row.meta_batch_multiplier // row.meta_batch_divisor)
    train_shots = row.train_shots or shots
    if benchmark == "sinusoid":
        train = Sinusoid(shots=train_shots, queries=row.train_queries or train_shots)
        val = None
    elif benchmark in MULTIMODAL_BENCHMARKS:  # the paper's 5 query points per task in training
        train = Multimodal.paper(_modes(benchmark), shots=train_shots, queries=row.train_queries or 5)
        val = None
    else:
        from .tasks import Omniglot

        queries = row.train_queries or budget.omniglot_queries
        if isinstance(queries, dict):  # by the shots trained; other shots: as many as the 20 drawings allow
            queries = queries.get(train_shots, min(max(queries.values()), 20 - train_shots))
        train = Omniglot(row.train_ways or ways, train_shots, queries, "train", root=root, protocol=protocol)
        val = test_sampler(benchmark, ways, shots, root, protocol, "val") if row.validate else None
    test = test_sampler(benchmark, ways, shots, root, protocol)
    torch.manual_seed(seed)  # the model's initialisation
    algorithm = build_algorithm(method, benchmark, ways, seed, **overrides)
    settings = {"method": method, "benchmark": benchmark, "ways": row.ways, "shots": shots,
                "train_shots": train_shots, "protocol": protocol if benchmark not in REGRESSION else None,
                "seed": seed, "budget": budget.name, "meta_batch": meta_batch, "outer_lr": row.outer_lr,
                "hyperparameters": {**row.hyperparameters, **overrides}}
    if row.train_ways is not None:  # only where set, so that existing checkpoints' settings still match
        settings["train_ways"] = row.train_ways
    if outer_lr_decay:  # likewise
        settings["outer_lr_decay"] = [list(step) for step in outer_lr_decay]
    return {"recipe": row, "algorithm": algorithm, "train": train, "val": val, "test": test,
            "iterations": iterations, "meta_batch": meta_batch, "budget": budget, "settings": settings}


def run(method: str, benchmark: str, ways: int | None = 5, shots: int = 1, budget: Budget | str | None = None,
        seed: int = 0, device=None, root=None, protocol: str = "maml", checkpoint=None, checkpoint_every: int = 100,
        restart: bool = False, progress: bool = True, eval_steps=(), eval_tasks: int | None = None,
        iterations: int | None = None, meta_batch: int | None = None, select: str = "last",
        outer_lr_decay=(), time_limit: float | None = None, **overrides) -> dict:
    """Meta-train the row's algorithm and score it on the test tasks.

    ``select="best_val"`` tests the parameters at the best validation score rather than the
    last iterate (see :func:`mlcourse.train.meta_train`).

    Returns ``{"algorithm", "history", "result", "results", "published", "settings", ...}``:
    ``result`` after the algorithm's own number of test-time steps, ``results`` keyed by the
    number of steps: each entry of ``eval_steps`` (adaptation curves), and that default.
    """
    setup = build(method, benchmark, ways, shots, budget, seed, root, protocol, iterations, meta_batch,
                  outer_lr_decay, **overrides)
    row, algorithm, budget = setup["recipe"], setup["algorithm"], setup["budget"]
    label = f"{method} {benchmark}" + (f" {row.ways}-way" if row.ways else "") + f" K={shots}"
    history = meta_train(algorithm, setup["train"], setup["iterations"], setup["meta_batch"], outer_lr=row.outer_lr,
                         val_sampler=setup["val"], val_every=budget.val_every, val_tasks=budget.val_tasks,
                         seed=seed, device=device, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                         progress=progress, desc=label, settings=setup["settings"], restart=restart,
                         select=select, outer_lr_decay=outer_lr_decay, time_limit=time_limit)
    tasks = eval_tasks or budget.eval_tasks
    default = algorithm.test_steps()
    results = {k: evaluate(algorithm, setup["test"], tasks, inner_steps=k, progress=progress)
               for k in dict.fromkeys([*eval_steps, default])}
    reference = published(method, benchmark, row.ways, shots) if row.ways is not None else None
    return {**setup, "history": history, "result": results[default], "results": results, "published": reference}


def with_sizes(budget: Budget, **sizes) -> Budget:
    """A copy of ``budget`` with some sizes changed (e.g. fewer iterations for a sweep)."""
    return dataclasses.replace(budget, **sizes)


def omniglot_runs_accuracy(algorithm, root=None, inner_steps: int | None = None) -> dict:
    """Accuracy on Lake's 20 one-shot runs (20-way 1-shot on the evaluation alphabets).

    ``algorithm`` must have been meta-trained 20-way; with ``protocol="lake"`` its training
    never saw these alphabets. Returns mean and 95% interval over the 20 runs.
    """
    from .tasks import OmniglotRuns
    from .train import confidence_interval, score_batch

    batch = OmniglotRuns(root=root).batch().to(next(algorithm.model.parameters()).device)
    metric, scores = score_batch(algorithm, batch, inner_steps)
    mean, ci = confidence_interval(scores)
    return {"metric": metric, "mean": mean, "ci95": ci, "num_tasks": len(scores), "scores": scores}
