"""PLL methods behind one interface; a new method is one file plus one line in `METHODS`.

A method object holds its state (confidences W, priors, queues), and offers:
  train_step(model, x_weak, x_strong, idx, epoch, step) -> (loss, logs)   one mini-batch, forward included
  adjust_test_logits(logits, classifier) -> logits                       the method's test-time prediction
  prior_estimate(classifier) -> tensor | None                            its current class-prior estimate
  state_dict() / load_state_dict(state)                                  for checkpoints
and, for multi-stage methods, stages(), enter_stage(stage, fresh) and end_epoch(stage, epoch, predict_train)
(see methods/base.py).
"""

from __future__ import annotations

from .corr import CorrFamily
from .solar import SoLar

METHODS = {"corr": CorrFamily, "solar": SoLar}


def create_method(cfg, candidates, class_counts, device, comm=None):
    """The method object for `cfg.method`, initialised from the training set's candidate matrix."""
    if cfg.method not in METHODS:
        raise ValueError(f"method={cfg.method!r} is not implemented; available: {sorted(METHODS)}")
    return METHODS[cfg.method](cfg, candidates, class_counts, device, comm)
