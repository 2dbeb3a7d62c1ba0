"""The per-epoch record of a run: column names, meanings and Arrow types. The base columns are here; each registered
method adds its own scalar columns (`MethodSpec.epoch_columns`), after these, in registration order."""

from __future__ import annotations

import pyarrow as pa

# Every per-epoch record carries these scalar fields (the contract with the sweep's epochs.parquet).
# Accuracies are in percent, as the paper prints them.
EPOCH_SCALARS = {
    "epoch": "0-based epoch index within the stage",
    "top1": "test top-1 (%) of the method's prediction: prior-adjusted for RECORDS and Oracle-LA disamb/posthoc",
    "top1_raw": "test top-1 (%) of the unadjusted logits",
    "top5": "test top-5 (%) of the method's prediction",
    "many": "mean per-class accuracy (%) over the many-shot classes (§9.2), method's prediction",
    "medium": "same, medium-shot classes",
    "few": "same, few-shot classes",
    "many_raw": "many-shot accuracy (%) of the unadjusted logits",
    "medium_raw": "medium-shot accuracy (%) of the unadjusted logits",
    "few_raw": "few-shot accuracy (%) of the unadjusted logits",
    "prior_kl": "KL(true training prior || estimated prior): RECORDS' pi-hat, SoLar's r",
    "pseudo_label_acc": "share (%) of training samples whose argmax confidence is the true label",
    "mmc": "mean over training samples of max_k W_ik (disambiguation sharpness)",
    "lr": "learning rate used in this epoch",
    "loss": "mean training loss over the epoch's steps",
    "loss_neg": "mean negative (non-candidate) term of the CORR family (null for SoLar)",
    "loss_con": "mean consistency term: CORR's KL terms; SoLar's strong view against the OT labels",
    "loss_mix": "mean mixup term (0 when off)",
    "epoch_s": "wall seconds of the epoch's training steps",
    "eval_s": "wall seconds of the test pass (and of SoLar's pass over the training set)",
    "images_per_s": "training samples per second (each sample forwards 2 or 4 views)",
}
EPOCH_LISTS = {
    "prior_est": "estimated class prior (K floats): RECORDS' softmax(A mu + b), SoLar's r",
    "per_class_acc": "test accuracy (%) per class (K floats), method's prediction",
}


def method_columns() -> dict[str, str]:
    """The registered methods' extra per-epoch columns (null for the other methods' runs)."""
    from .methods import REGISTRY

    out: dict[str, str] = {}
    for spec in REGISTRY.values():
        out.update(spec.epoch_columns)
    return out


def epoch_row_schema() -> pa.Schema:
    return pa.schema(
        [pa.field("config_hash", pa.string(), nullable=False), pa.field("stage", pa.string(), nullable=False)]
        + [pa.field(name, pa.int64() if name == "epoch" else pa.float64()) for name in EPOCH_SCALARS]
        + [pa.field(name, pa.list_(pa.float64())) for name in EPOCH_LISTS]
        + [pa.field(name, pa.float64()) for name in method_columns() if name not in EPOCH_SCALARS]
    )
