"""Data parallelism keeps the single-process algorithm (METHOD.md §8.2): two gloo ranks end with identical W, mu
and weights, and their test counts are summed over the whole test set."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainables.comm import TorchDistComm
from trainables.config import RunOptions, TrialConfig
from trainables.data.loaders import EpochBatchSampler, build_dataset
from trainables.loop import fit
from trainables.methods.corr import initial_confidences

CFG = TrialConfig(dataset="cifar10", rho=10, q=0.3, img_max=60, test_per_class=21, arch="small-cnn", epochs=2,
                  batch_size=32, records=True, mixup=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SOLAR = TrialConfig(dataset="cifar10", rho=10, q=0.3, img_max=60, test_per_class=21, arch="small-cnn", epochs=2,
                    batch_size=32, method="solar", params=dict(est_epochs=1, queue_batches=2))


def _rank_entry(rank: int, world: int, port: int, out_dir: str, body, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(body(*args), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(body, out_dir, *args, world: int = 2) -> list[dict]:
    """Run `body(*args)` on `world` gloo ranks (processes); return what each rank's call returned (tensors, state
    dicts and plain values). `body` must be a module-level function, so the spawned ranks can import it."""
    mp.spawn(_rank_entry, args=(world, _free_port(), str(out_dir), body, args), nprocs=world, join=True)
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def _fit_state(cfg: TrialConfig) -> dict:
    result = fit(cfg, RunOptions(data_root="synthetic", num_workers=0, verbose=False), comm=TorchDistComm())
    state = {"W": result.method.confidences, "model": result.model.state_dict(), "history": result.history}
    if cfg.method == "solar":
        state.update(prior=result.method.prior, queue=result.method.queue)
    else:
        state["mu"] = result.method.mu
    return state


@pytest.mark.slow
def test_two_ranks_stay_identical(tmp_path):
    r0, r1 = run_ranks(_fit_state, tmp_path, CFG)
    assert torch.equal(r0["W"], r1["W"])
    assert torch.equal(r0["mu"], r1["mu"])
    for key, value in r0["model"].items():  # weights and BatchNorm statistics (rank 0's, after each epoch)
        assert torch.equal(value, r1["model"][key]), key
    # W was updated in epoch 1 for every sample of the global batches, whichever rank saw it
    data = build_dataset(CFG, "synthetic")
    candidates = torch.from_numpy(data.train.candidates)
    n = len(candidates)
    sampler = EpochBatchSampler(n, CFG.batch_size, CFG.seed)
    seen = torch.zeros(n, dtype=torch.bool)
    seen[sampler.permutation(1)[: len(sampler) * CFG.batch_size]] = True
    ambiguous = candidates.sum(dim=1) > 1  # a singleton set stays one-hot
    changed = (r0["W"] != initial_confidences(candidates)).any(dim=1)
    assert torch.equal(changed, seen & ambiguous)
    # the test counts cover the whole test set once: both ranks report the same, complete accuracy
    assert r0["history"][-1]["top1"] == r1["history"][-1]["top1"]
    per_class = r0["history"][-1]["per_class_acc"]
    assert all(abs(a * 21 / 100 - round(a * 21 / 100)) < 1e-6 for a in per_class)  # hits out of 21 per class


@pytest.mark.slow
def test_two_ranks_of_solar_share_queue_prior_and_confidences(tmp_path):
    r0, r1 = run_ranks(_fit_state, tmp_path, SOLAR)
    for key in ("W", "prior", "queue"):
        assert torch.equal(r0[key], r1[key]), key
    assert r0["queue"].abs().sum() > 0  # the queue holds both ranks' rows
    assert [(h["stage"], h["epoch"]) for h in r0["history"]] == [("estimate", 0), ("train", 0), ("train", 1)]
    assert r0["history"][-1]["prior_est"] == r1["history"][-1]["prior_est"]
