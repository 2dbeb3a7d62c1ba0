"""`fit(cfg, options)`: the epoch loop, framework-free and checkpointable.

Per epoch: the method's steps over the training loader, the test pass, one metrics row, a checkpoint, then the
`on_epoch` callback (the CLI prints, the Ray worker reports). Nothing in the step loop reads values back to the host:
loss terms accumulate on the device and are read once per epoch, where a non-finite loss stops the run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import __version__
from .checkpoint import FILENAME, load_latest, remove_stray_temps, save_checkpoint
from .comm import Comm
from .config import LEGACY_VALUES, RunOptions, TrialConfig
from .data.augment import normalize
from .data.loaders import TrialData, build_dataset, make_train_batches, to_device_images
from .history import write_run_files
from .methods import create_method
from .metrics import confidence_summary, group_accuracy, prior_kl, shot_groups, topk_hits
from .models import ModelHandle, create_model, unwrap

EVAL_BATCH = 1024  # the reference evaluates at 4 x the training batch; any size gives the same counts


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


class ResumeMismatch(ValueError):
    """A checkpoint belongs to another configuration."""


@dataclasses.dataclass
class FitResult:
    history: list[dict]
    data: TrialData
    method: object
    model: torch.nn.Module | None  # None when a resumed run had nothing left to do


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here")
    return device


def build_optimizer(cfg: TrialConfig, model: torch.nn.Module, extra_params=()):
    """SGD (momentum 0.9, no Nesterov, weight decay on every parameter) and the per-epoch cosine schedule (§8.1):
    lr_e = eta_min + (lr - eta_min)(1 + cos(pi e / E)) / 2 with eta_min = lr * lr_min_ratio. `extra_params`: the
    method's own trainable modules' parameters (PLLMethod.extra_parameters), in the same group."""
    optimizer = torch.optim.SGD([*model.parameters(), *extra_params], lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs,
                                                           eta_min=cfg.lr * cfg.lr_min_ratio)
    return optimizer, scheduler


def config_diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


@torch.no_grad()
def evaluate(model: ModelHandle, method, images: torch.Tensor, labels: torch.Tensor, norm, num_classes: int,
             comm: Comm) -> dict[str, torch.Tensor]:
    """Per-class top-1 hits (method's prediction and raw logits) and top-5 hits over this rank's share of the test
    set, summed over ranks: accuracy is counted over all samples (§9.1 fix)."""
    net = model.net
    was_training = net.training
    net.eval()
    shard = slice(comm.rank, None, comm.world_size)
    images, labels = images[shard], labels[shard]
    hits = torch.zeros(num_classes, dtype=torch.float64, device=images.device)
    hits_raw = torch.zeros_like(hits)
    top5 = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(labels), EVAL_BATCH):
        x = normalize(images[start:start + EVAL_BATCH], *norm)
        y = labels[start:start + EVAL_BATCH]
        logits, _ = model(x)
        adjusted = method.adjust_test_logits(logits, model.classifier)
        h, t5 = topk_hits(adjusted, y, num_classes)
        h_raw, _ = topk_hits(logits, y, num_classes)
        hits += h
        hits_raw += h_raw
        top5 += t5
    totals = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    reduced = comm.all_reduce_sum(torch.cat([hits, hits_raw, totals, top5[None]]))
    net.train(was_training)
    k = num_classes
    return {"hits": reduced[:k], "hits_raw": reduced[k:2 * k], "totals": reduced[2 * k:3 * k], "top5": reduced[-1]}


@torch.no_grad()
def predict_images(model: ModelHandle, images: torch.Tensor, norm) -> torch.Tensor:
    """Eval-mode logits of a whole uint8 image tensor, in order (SoLar's per-epoch estimation pass)."""
    net = model.net
    was_training = net.training
    net.eval()
    out = [model(normalize(images[s:s + EVAL_BATCH], *norm))[0] for s in range(0, len(images), EVAL_BATCH)]
    net.train(was_training)
    return torch.cat(out)


def train_steps(model: ModelHandle, method, optimizer, batches, norm, device: torch.device, epoch: int
                ) -> dict[str, torch.Tensor]:
    """One pass of the method's steps over `batches` (the loader, or a slice of it); returns the summed loss terms,
    still on the device: nothing here reads a value back to the host."""
    sums: dict[str, torch.Tensor] = {}
    for step, (x_weak, x_strong, idx) in enumerate(batches):
        x_weak = normalize(x_weak.to(device, non_blocking=True), *norm)
        x_strong = normalize(x_strong.to(device, non_blocking=True), *norm)
        idx = idx.to(device, non_blocking=True)
        loss, logs = method.train_step(model, x_weak, x_strong, idx, epoch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step()
        optimizer.step()
        method.after_step(model, epoch, step)
        for name, value in logs.items():
            sums[name] = sums[name] + value.double() if name in sums else value.double()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return sums


def resume_plan(stages: list[tuple[str, int]], resume: dict | None) -> list[tuple[str, int, int, int]]:
    """(stage, its epochs, first epoch to run, epoch offset) of each stage left to run after the checkpoint `resume`
    (None: all of them from epoch 0). The offset counts the epochs of earlier stages: batch order and augmentation
    keys run on across stages."""
    names = [name for name, _ in stages]
    done = names.index(resume["stage"]) if resume is not None else -1
    plan, offset = [], 0
    for i, (stage, epochs) in enumerate(stages):
        start = resume["epoch"] if i == done else 0
        if i >= done and start < epochs:
            plan.append((stage, epochs, start, offset))
        offset += epochs
    return plan


def epoch_row(cfg: TrialConfig, stage: str, epoch: int, ev: dict[str, torch.Tensor], prior: torch.Tensor | None,
              confidence: tuple[float, float], groups, true_prior: torch.Tensor) -> dict:
    """The epoch's metrics from the test pass (`evaluate`), the method's prior estimate and its confidence summary
    (pseudo-label accuracy, mmc); the loop adds the timings, the learning rate and the loss terms."""
    per_class = (ev["hits"] / ev["totals"].clamp_min(1) * 100).cpu()
    per_class_raw = (ev["hits_raw"] / ev["totals"].clamp_min(1) * 100).cpu()
    total = float(ev["totals"].sum())
    many, medium, few = group_accuracy(per_class, groups)
    many_raw, medium_raw, few_raw = group_accuracy(per_class_raw, groups)
    return {
        "config_hash": cfg.config_hash, "stage": stage, "epoch": epoch,
        "top1": float(ev["hits"].sum()) / total * 100, "top1_raw": float(ev["hits_raw"].sum()) / total * 100,
        "top5": float(ev["top5"]) / total * 100,
        "many": many, "medium": medium, "few": few,
        "many_raw": many_raw, "medium_raw": medium_raw, "few_raw": few_raw,
        "prior_kl": prior_kl(true_prior, prior.cpu()) if prior is not None else None,
        "pseudo_label_acc": confidence[0], "mmc": confidence[1],
        "prior_est": prior.cpu().double().tolist() if prior is not None else None,
        "per_class_acc": per_class.tolist(),
    }


def fit(cfg: TrialConfig, options: RunOptions, on_epoch: Callable[[dict, Path | None], None] | None = None,
        comm: Comm | None = None, resume_from: str | Path | None = None) -> FitResult:
    """Train `cfg` to the end (or from `resume_from`, a checkpoint file) and return the metric history."""
    comm = comm or Comm()
    device = resolve_device(options.device)
    out_dir = Path(options.out_dir) if options.out_dir else None
    is_writer = comm.rank == 0

    data = build_dataset(cfg, options.data_root, download=options.download)
    k = data.num_classes
    method = create_method(cfg, torch.from_numpy(data.train.candidates), data.train.counts, device, comm)
    train_labels = torch.from_numpy(data.train.labels).to(device)
    # uploaded on first use (by the tensor views, or methods with an estimation pass)
    train_images_dev = to_device_images(data.train_images, device) if cfg.augment == "tensor" else None
    test_images = to_device_images(data.test_images, device)
    test_labels = torch.from_numpy(data.test_labels).to(device)
    groups = shot_groups(data.train.counts)
    true_prior = torch.as_tensor(data.train.true_prior)
    loader, sampler = make_train_batches(data, cfg, options.num_workers, device, comm.rank, comm.world_size,
                                         train_images=train_images_dev)
    steps = len(sampler)
    samples_per_epoch = steps * cfg.batch_size

    history: list[dict] = []
    resume = None
    if is_writer and out_dir is not None and out_dir.is_dir():
        remove_stray_temps(out_dir)  # a killed writer's half-written files; this rank is the folder's only writer
    if resume_from is not None:
        resume, resume_from = load_latest(Path(resume_from))
        if resume["config_hash"] != cfg.config_hash:
            diff = config_diff({**LEGACY_VALUES, **resume["config"]}, cfg.to_dict())  # as the run meant it
            raise ResumeMismatch(f"checkpoint {resume_from} belongs to config {resume['config_hash']}, not "
                                 f"{cfg.config_hash}; differing fields: {'; '.join(diff) or '(none: code changed)'}")
        method.load_state_dict(resume["method"])
        history = list(resume["history"])

    net = None
    stage_names = [s for s, _ in method.stages()]
    for stage, stage_epochs, start_epoch, epoch_offset in resume_plan(method.stages(), resume):
        net = create_model(cfg.arch, k, seed=cfg.seed + stage_names.index(stage), device=device,
                           precision=cfg.precision)
        optimizer, scheduler = build_optimizer(cfg, net, list(method.extra_parameters(net)))
        fresh = not (resume is not None and start_epoch > 0)
        if not fresh:
            net.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
        method.enter_stage(stage, fresh)
        resume = None  # consumed
        if comm.world_size > 1:
            # No buffer broadcast inside forward: SoLar's number of forwards per step differs across ranks (its
            # third forward needs a reliable sample), and a collective per forward would then deadlock. BatchNorm
            # statistics are made equal once per epoch instead (before the passes in eval mode).
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        model = ModelHandle(net, cfg.precision)
        net.train()

        for epoch in range(start_epoch, stage_epochs):
            lr = optimizer.param_groups[0]["lr"]
            sampler.set_epoch(epoch_offset + epoch)
            t0 = time.perf_counter()
            batches = loader
            if options.progress_bar and is_writer:
                from tqdm import tqdm

                label = f"{'' if stage == 'train' else stage + ' '}epoch {epoch + 1}/{stage_epochs}"
                batches = tqdm(loader, total=steps, desc=label, unit="step", leave=False, file=sys.stderr)
            sums = train_steps(model, method, optimizer, batches, data.train_norm, device, epoch)
            epoch_s = time.perf_counter() - t0
            scheduler.step()

            def predict_train(model=model):
                """(indices, eval-mode logits) of this rank's share of the training set, test transform."""
                nonlocal train_images_dev
                if train_images_dev is None:
                    train_images_dev = to_device_images(data.train_images, device)
                shard = torch.arange(comm.rank, len(train_images_dev), comm.world_size, device=device)
                return shard, predict_images(model, train_images_dev[shard], data.test_norm)

            t1 = time.perf_counter()
            for buffer in unwrap(net).buffers():  # BatchNorm running statistics: rank 0's on every rank
                comm.broadcast_(buffer)
            extra = method.end_epoch(stage, epoch, predict_train)
            ev = evaluate(model, method, test_images, test_labels, data.test_norm, k, comm)
            eval_s = time.perf_counter() - t1

            means = {name: float(value) / max(steps, 1) for name, value in sums.items()}
            if not all(math.isfinite(v) for v in means.values()):
                terms = ", ".join(f"{k} {v}" for k, v in means.items())
                raise TrainingDiverged(
                    f"training loss is {means['loss']} ({terms}) in {stage} epoch {epoch} of {cfg.describe()} "
                    f"[{cfg.config_hash}]; stopping. The last checkpoint holds the state before this epoch.")
            row = epoch_row(cfg, stage, epoch, ev, method.prior_estimate(model.classifier),
                            confidence_summary(method.confidences, train_labels), groups, true_prior)
            row.update(lr=lr, **means, epoch_s=epoch_s, eval_s=eval_s,
                       images_per_s=samples_per_epoch / max(epoch_s, 1e-9), **extra)
            history.append(row)

            ckpt_path = None
            if is_writer and out_dir is not None:
                last = epoch == stage_epochs - 1
                if last or (epoch + 1) % options.checkpoint_every == 0:
                    ckpt_path = out_dir / FILENAME
                    save_checkpoint(
                        ckpt_path, config=cfg.to_dict(), config_hash=cfg.config_hash, stage=stage, epoch=epoch + 1,
                        model=unwrap(net).state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), method=method.state_dict(), history=history,
                        extra={"source": data.source, "device": str(device)}, package_version=__version__)
                write_run_files(out_dir, cfg.to_dict(), history)
            if options.verbose and is_writer:
                print(format_epoch(row, stage_epochs, cfg), flush=True)
            if on_epoch is not None:
                on_epoch(row, ckpt_path)
    return FitResult(history=history, data=data, method=method, model=None if net is None else unwrap(net))


def format_epoch(row: dict, epochs: int, cfg: TrialConfig) -> str:
    stage = "" if row["stage"] == "train" else f"[{row['stage']}] "
    kl = f" kl {row['prior_kl']:.3f}" if row.get("prior_kl") is not None else ""
    return (f"{stage}epoch {row['epoch'] + 1:>4}/{epochs} top1 {row['top1']:6.2f} (raw {row['top1_raw']:6.2f}) "
            f"many/med/few {row['many']:5.1f}/{row['medium']:5.1f}/{row['few']:5.1f}{kl} "
            f"pl_acc {row['pseudo_label_acc']:5.1f} mmc {row['mmc']:.3f} loss {row['loss']:.4f} lr {row['lr']:.2e} "
            f"{row['epoch_s']:.1f}s {row['images_per_s']:.0f} img/s")
