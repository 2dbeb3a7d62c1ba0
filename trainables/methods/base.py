"""The outer interface every PLL method offers the training loop (see methods/__init__.py)."""

from __future__ import annotations

import torch


class PLLMethod:
    """Defaults for the optional hooks; a one-stage method only implements train_step and its state."""

    confidences: torch.Tensor  # W [N, K]: the current label confidences of the training samples

    def stages(self) -> list[tuple[str, int]]:
        """(stage name, epochs) in order; each stage starts from a fresh model and optimiser."""
        return [("train", self.cfg.epochs)]

    def enter_stage(self, stage: str, fresh: bool) -> None:
        """Called when a stage starts: fresh=True at its first epoch, False when a checkpoint resumes it mid-way."""

    def end_epoch(self, stage: str, epoch: int, predict_train) -> dict[str, float]:
        """After each epoch's steps, before the test pass. `predict_train()` returns (indices, logits): eval-mode,
        test-transform logits of this rank's share of the training set (a forward-only pass; the shares of all
        ranks cover the set once). Extra scalar logs are returned."""
        return {}

    def prior_estimate(self, classifier: torch.nn.Linear) -> torch.Tensor | None:
        return None

    def adjust_test_logits(self, logits: torch.Tensor, classifier: torch.nn.Linear) -> torch.Tensor:
        return logits
