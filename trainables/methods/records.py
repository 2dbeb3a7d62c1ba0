"""RECORDS' whole contribution (METHOD.md §4): a momentum estimate of the model's training class prior, and the
logit adjustment that rebalances label disambiguation and test-time prediction with it.

The model-implied prior E_x softmax(f(x)) is approximated by pushing an EMA of the penultimate feature through the
classifier: pi_hat = softmax(A mu + b). It costs one matrix-vector product per step and no pass over the data.
"""

from __future__ import annotations

import torch

EPS = 1e-9  # the reference's epsilon inside log(pi + eps)


@torch.no_grad()
def update_feature_mean(mu: torch.Tensor | None, batch_feature_mean: torch.Tensor, momentum: float) -> torch.Tensor:
    """EMA of the feature mean, started at zero without bias correction, as the reference: the first estimate is
    (1 - m) * f_bar, which keeps A mu + b close to b, so pi_hat starts near uniform.

    batch_feature_mean: mean over the batch of (phi(x_weak) + phi(x_strong)) / 2 (all ranks' samples under DDP).
    """
    if mu is None:
        return (1.0 - momentum) * batch_feature_mean
    return momentum * mu + (1.0 - momentum) * batch_feature_mean


@torch.no_grad()
def estimate_class_prior(mu: torch.Tensor, fc_weight: torch.Tensor, fc_bias: torch.Tensor) -> torch.Tensor:
    """pi_hat = softmax(A mu + b) with the classifier's current weights, in fp32."""
    logits = fc_weight.float() @ mu.float() + fc_bias.float()
    return torch.softmax(logits, dim=0)


def log_prior(prior: torch.Tensor) -> torch.Tensor:
    """log(pi + eps): the shift subtracted from logits to turn P_train(y|x) into a balanced posterior."""
    return torch.log(prior + EPS)



class RecordsPrior:
    """RECORDS as a component any PLL method holds: the running feature mean mu and the prior it implies.

    A method calls `update` once per step with the features it wants averaged (CORR: the mean of the two views';
    PRODEN and PiCO: the weak view's), and reads `estimate` / `log_shift` where it rebalances. Under DDP the batch
    mean is taken over every rank's samples (one all-reduce of sum and count), so mu is identical on all ranks.
    mu is tracked for every variant, plain ones included: it gives the logged pi_hat diagnostic.
    """

    def __init__(self, momentum: float, comm):
        self.momentum = momentum
        self.comm = comm
        self.mu: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> None:
        stats = self.comm.all_reduce_sum(torch.cat([features.sum(dim=0), features.new_tensor([len(features)])]))
        self.mu = update_feature_mean(self.mu, stats[:-1] / stats[-1], self.momentum)

    def estimate(self, classifier: torch.nn.Linear) -> torch.Tensor | None:
        """pi_hat with the current classifier; None before the first step."""
        return None if self.mu is None else estimate_class_prior(self.mu, classifier.weight, classifier.bias)

    def state(self) -> torch.Tensor | None:
        """mu for a checkpoint (stored under the method state's 'mu' key)."""
        return None if self.mu is None else self.mu.cpu()

    def load(self, mu: torch.Tensor | None, device: torch.device) -> None:
        self.mu = None if mu is None else mu.to(device)


def shift_logits(logits: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """logits - log(prior + eps): the balanced posterior's logits (unchanged when there is no prior)."""
    return logits if prior is None else logits - log_prior(prior)
