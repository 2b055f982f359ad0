"""One knob that scales every experiment: the budget.

``smoke`` runs each training in seconds (CI), ``default`` fits a 2-core CPU (minutes per chapter;
each chapter prints its own wall time), ``paper`` uses the papers' iteration counts and
meta-batches (a GPU).
Budgets change sizes only, never the code path. Choose with ``MLCOURSE_BUDGET``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

ENV_VAR = "MLCOURSE_BUDGET"


@dataclass(frozen=True)
class Budget:
    name: str
    sinusoid_iterations: int      # MAML paper: 70,000 meta-iterations
    sinusoid_meta_batch: int      # 25 tasks
    omniglot_iterations: int      # 60,000
    omniglot_meta_batch: int      # 32 for 5-way (16 for 20-way: halve it)
    omniglot_queries: int         # query drawings per class during meta-training
    omniglot20_iterations: int    # 20-way runs (five inner steps each: dearer per iteration)
    eval_tasks: int               # test tasks for a 95% interval (600 in the papers)
    val_every: int                # meta-iterations between validations
    val_tasks: int                # tasks per validation
    timing_repeats: int           # repetitions when timing one meta-iteration
    reptile_iterations: int       # Reptile on Omniglot (its paper: 100,000 iterations of 5 tasks)
    sweep_iterations: int         # each run of an inner-loop sweep (sinusoid meta-iterations)
    imaml_iterations: int         # iMAML on Omniglot, and MAML beside it (chapter 5)
    multimodal_iterations: int    # multimodal regression (chapter 8; the MMAML paper: 70,000)
    multimodal_tasks_per_mode: int  # tasks of each mode in a meta-batch (the MMAML paper: 25)
    multimodal_image_iterations: int  # multimodal Omniglot classification (chapter 8)
    family_iterations: int        # each method of chapter 10's Omniglot table (equal for all)

    def as_dict(self):
        return asdict(self)


BUDGETS = {
    "smoke": Budget("smoke", sinusoid_iterations=500, sinusoid_meta_batch=10, omniglot_iterations=6,
                    omniglot_meta_batch=4, omniglot_queries=2, omniglot20_iterations=4, eval_tasks=100, val_every=3, val_tasks=8,
                    timing_repeats=2, reptile_iterations=4, sweep_iterations=30,
                    imaml_iterations=2, multimodal_iterations=400, multimodal_tasks_per_mode=4,
                    multimodal_image_iterations=4, family_iterations=6),
    "default": Budget("default", sinusoid_iterations=15000, sinusoid_meta_batch=25, omniglot_iterations=1500,
                      omniglot_meta_batch=8, omniglot_queries=5, omniglot20_iterations=100, eval_tasks=600, val_every=100, val_tasks=100,
                      timing_repeats=5, reptile_iterations=800, sweep_iterations=2000,
                      imaml_iterations=100, multimodal_iterations=1500, multimodal_tasks_per_mode=10,
                      multimodal_image_iterations=300, family_iterations=500),
    "paper": Budget("paper", sinusoid_iterations=70000, sinusoid_meta_batch=25, omniglot_iterations=60000,
                    omniglot_meta_batch=32, omniglot_queries=15, omniglot20_iterations=60000, eval_tasks=600, val_every=1000,
                    val_tasks=300, timing_repeats=20, reptile_iterations=100000, sweep_iterations=20000,
                    imaml_iterations=12000, multimodal_iterations=70000, multimodal_tasks_per_mode=25,
                    multimodal_image_iterations=60000, family_iterations=60000),
}


def get_budget(name: str | None = None) -> Budget:
    """The budget named ``name``, else ``$MLCOURSE_BUDGET``, else ``default``."""
    chosen = name if name is not None else os.environ.get(ENV_VAR, "default")
    if chosen not in BUDGETS:
        raise ValueError(f"budget {chosen!r} is unknown: allowed {', '.join(BUDGETS)} "
                         f"(set with the {ENV_VAR} environment variable)")
    return BUDGETS[chosen]
