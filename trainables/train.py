"""One run in one process: `python -m trainables.train --dataset cifar10 --rho 100 --q 0.3 --records ...`.

Prints one line per epoch (on a terminal, also a progress bar over the epoch's steps); RUN_DIR (--out) receives
config.json, checkpoint.pt and epochs.parquet. `--resume`
continues the run in RUN_DIR from its checkpoint, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import FAITHFUL_QUIRKS, ORACLE_LA_MODES, ConfigError, RunOptions, TrialConfig, field_docs, type_name
from .methods import REGISTRY

# CLI flag -> TrialConfig field, for the flags whose names differ from the field names.
_RENAMED = {"wd": "weight_decay", "m": "prior_momentum"}


def build_parser() -> argparse.ArgumentParser:
    docs = field_docs()
    d = TrialConfig()
    p = argparse.ArgumentParser(prog="python -m trainables.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["cifar10", "cifar100"], default=d.dataset, help=docs["dataset"])
    g.add_argument("--nu", action="store_true", help=docs["nu"])
    g.add_argument("--rho", type=float, default=d.rho, help=docs["rho"])
    g.add_argument("--q", type=float, default=d.q, help=docs["q"])
    g.add_argument("--img-max", type=int, default=None, help=docs["img_max"])
    g.add_argument("--test-per-class", type=int, default=None, help=docs["test_per_class"])
    g.add_argument("--data-seed", type=int, default=d.data_seed, help=docs["data_seed"])
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(REGISTRY), default=d.method,
                   help="; ".join(f"{spec.name}: {spec.doc or spec.display}" for spec in REGISTRY.values()))
    g.add_argument("--records", action="store_true", help=docs["records"])
    g.add_argument("--mixup", action="store_true", help=docs["mixup"])
    g.add_argument("--oracle-la", choices=list(ORACLE_LA_MODES), default=None, help=docs["oracle_la"])
    g.add_argument("--m", type=float, default=d.prior_momentum, help=docs["prior_momentum"])
    g.add_argument("--mixup-weight", type=float, default=d.mixup_weight, help=docs["mixup_weight"])
    g.add_argument("--mixup-beta", type=float, default=d.mixup_beta, help=docs["mixup_beta"])
    g.add_argument("--upd-start", type=int, default=d.upd_start, help=docs["upd_start"])
    for spec in REGISTRY.values():  # each method's own parameters, under their flat names; unset = its default
        if spec.params is None:
            continue
        g = p.add_argument_group(f"{spec.display} (--method {spec.name})")
        param_docs = field_docs(spec.params)
        for f in spec.param_fields():
            flag = "--" + spec.flat_name(f.name).replace("_", "-")
            g.add_argument(flag, type=_arg_type(type_name(f.type)), default=None, help=param_docs.get(f.name, ""))
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", choices=["resnet18", "small-cnn"], default=d.arch, help=docs["arch"])
    g.add_argument("--epochs", type=int, default=d.epochs, help=docs["epochs"])
    g.add_argument("--batch-size", type=int, default=d.batch_size, help=docs["batch_size"])
    g.add_argument("--lr", type=float, default=d.lr, help=docs["lr"])
    g.add_argument("--wd", type=float, default=d.weight_decay, help=docs["weight_decay"])
    g.add_argument("--momentum", type=float, default=d.momentum, help=docs["momentum"])
    g.add_argument("--lr-min-ratio", type=float, default=d.lr_min_ratio, help=docs["lr_min_ratio"])
    g.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision, help=docs["precision"])
    g.add_argument("--augment", choices=["pil", "tensor"], default=d.augment, help=docs["augment"])
    g.add_argument("--seed", type=int, default=d.seed, help=docs["seed"])
    g.add_argument("--faithful", default="", metavar="QUIRK[,QUIRK]",
                   help="reference quirks to reproduce instead of fixing: 'all' or a comma list of "
                        + ", ".join(f"{k} ({v})" for k, v in FAITHFUL_QUIRKS.items()))
    g = p.add_argument_group("run")
    o = RunOptions()
    g.add_argument("--data-root", required=True, help=field_docs(RunOptions)["data_root"])
    g.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (config.json, checkpoint.pt, "
                   "epochs.parquet)")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    g.add_argument("--device", default=o.device, help=field_docs(RunOptions)["device"])
    g.add_argument("--num-workers", type=int, default=o.num_workers, help=field_docs(RunOptions)["num_workers"])
    g.add_argument("--checkpoint-every", type=int, default=o.checkpoint_every,
                   help=field_docs(RunOptions)["checkpoint_every"])
    g.add_argument("--download", action="store_true", help=field_docs(RunOptions)["download"])
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return p


def _arg_type(annotation: str):
    kinds = [k for k in (p.strip() for p in annotation.split("|")) if k != "None"]
    return {"int": int, "float": float, "bool": lambda t: t.lower() in ("1", "true", "yes")}.get(kinds[0], str)


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    keys = {f for f in TrialConfig.__dataclass_fields__} - {"params"}
    keys |= {key for spec in REGISTRY.values() for key in spec.flat_keys()}
    values = {}
    for key, value in vars(args).items():
        name = _RENAMED.get(key, key)
        if name in keys:
            values[name] = value
    return TrialConfig.from_dict(values, stored=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        parser.error(str(err))
    if args.num_workers < 0:
        parser.error(f"--num-workers={args.num_workers}: must be >= 0")
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every={args.checkpoint_every}: must be >= 1")

    from .checkpoint import FILENAME, PREV_FILENAME

    out = Path(args.out)
    ckpt = out / FILENAME
    resume_from = None
    held = [p for p in (ckpt, out / PREV_FILENAME) if p.exists()]
    if held:
        if not args.resume:
            parser.error(f"{out} already holds a run ({held[0]}); pass --resume to continue it, or choose another "
                         "--out")
        resume_from = ckpt  # load_latest falls back to the previous checkpoint when this one is missing or torn
    elif args.resume:
        # a mistyped --out must not silently train from scratch
        parser.error(f"--resume: no run in {out} (no {FILENAME} or {PREV_FILENAME}); check --out, or drop --resume "
                     "to start a new run there")

    import torch

    from .data.sources import DataError
    from .loop import ResumeMismatch, fit

    if args.threads:
        torch.set_num_threads(args.threads)
    options = RunOptions(data_root=args.data_root, out_dir=str(out), device=args.device,
                         num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
                         download=args.download, verbose=not args.quiet,
                         progress_bar=not args.quiet and sys.stderr.isatty())
    out.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    print(f"{cfg.describe()}  [config {cfg.config_hash}] -> {out}", flush=True)
    try:
        result = fit(cfg, options, resume_from=resume_from)
    except (DataError, ResumeMismatch, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.history:
        last = result.history[-1]
        print(f"done: top1 {last['top1']:.2f} (raw {last['top1_raw']:.2f}) after {last['epoch'] + 1} epochs of "
              f"stage '{last['stage']}'", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
