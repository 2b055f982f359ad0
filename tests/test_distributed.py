"""A meta-batch split over two CPU processes (torch.distributed, gloo) equals one process."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from mlcourse import distributed
from mlcourse.algorithms import MAML
from mlcourse.nn import MLP
from mlcourse.tasks import Sinusoid
from mlcourse.train import meta_train

ITERATIONS, META_BATCH = 3, 5  # 5 tasks over 2 processes: shares of 2 and 3


def build(seed=0):
    torch.manual_seed(seed)
    return MAML(MLP([1, 16, 16, 1]), F.mse_loss, inner_lr=0.01, inner_steps=2)


def single_process():
    sampler = Sinusoid(5, 5)
    batch = sampler.sample(META_BATCH, generator=torch.Generator().manual_seed(7))
    alg = build()
    loss, grads = alg.meta_gradient(batch)
    history = meta_train(build_into := build(), sampler, ITERATIONS, META_BATCH, outer_lr=0.01, progress=False)
    return loss, grads, history["loss"], {k: v.detach().clone() for k, v in build_into.state_dict().items()}


def _worker(rank, size, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:
        sampler = Sinusoid(5, 5)
        batch = sampler.sample(META_BATCH, generator=torch.Generator().manual_seed(7))
        mine = distributed.share(batch, rank, size)
        loss, grads = build().meta_gradient(mine)
        loss, grads = distributed.average(loss, grads, mine.num_tasks, META_BATCH)
        alg = build()
        history = meta_train(alg, sampler, ITERATIONS, META_BATCH, outer_lr=0.01, progress=False)
        if rank == 0:
            torch.save({"loss": loss, "grads": grads, "history": history["loss"], "model": alg.state_dict(),
                        "world": distributed.world()}, out_file)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path):
    torch.set_num_threads(1)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    got = torch.load(tmp_path / "out.pt", weights_only=False)
    assert got["world"] == (0, 2)
    loss, grads, losses, model = single_process()
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-6, atol=1e-7)
    for k in grads:
        torch.testing.assert_close(got["grads"][k], grads[k], rtol=1e-5, atol=1e-7, msg=k)
    torch.testing.assert_close(torch.tensor(got["history"]), torch.tensor(losses), rtol=1e-5, atol=1e-7)
    for k in model:
        torch.testing.assert_close(got["model"][k], model[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_share_per_rank_covers_every_task_once():
    batch = Sinusoid(3, 4).sample(7, generator=torch.Generator().manual_seed(0))
    shares = [distributed.share(batch, r, 3) for r in range(3)]
    assert [s.num_tasks for s in shares] == [2, 2, 3]
    torch.testing.assert_close(torch.cat([s.support_x for s in shares]), batch.support_x)
    with pytest.raises(ValueError, match="meta_batch=7 is smaller than the number of processes \\(8\\)"):
        distributed.share(batch, 0, 8)


def test_cli_nproc_is_checked_before_anything_starts():
    result = subprocess.run([sys.executable, "-m", "mlcourse", "reproduce", "maml", "sinusoid", "--nproc", "0"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "--nproc=0 is out of range: allowed >= 1" in result.stderr


def test_cli_nproc_2_reproduces_the_single_process_run(tmp_path):
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}.json"
        result = subprocess.run([sys.executable, "-m", "mlcourse", "reproduce", "maml", "sinusoid", "--budget",
                                 "smoke", "--iterations", "4", "--nproc", str(nproc), "--out", str(out)],
                                capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        runs[nproc] = __import__("json").loads(out.read_text())
    assert runs[2]["processes"] == 2 and runs[1]["processes"] == 1
    assert runs[2]["final_meta_loss"] == pytest.approx(runs[1]["final_meta_loss"], rel=1e-5)
    for k, v in runs[1]["results"].items():
        assert runs[2]["results"][k]["mean"] == pytest.approx(v["mean"], rel=1e-4)


def _time_limit_worker(rank, size, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=size)
    try:  # rank 0 is out of time at once, rank 1 never: both must stop at the same checkpoint
        history = meta_train(build(), Sinusoid(5, 5), 6, META_BATCH, outer_lr=0.01, progress=False,
                             checkpoint_every=2, time_limit=0 if rank == 0 else 1e9)
        torch.save({"iterations": len(history["loss"]), "stopped": history.get("stopped_at_time_limit")},
                   f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_a_time_limit_stops_every_process_at_the_same_iteration(tmp_path):
    mp.spawn(_time_limit_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in (0, 1):
        assert torch.load(f"{tmp_path / 'out'}.{rank}") == {"iterations": 2, "stopped": 2}
