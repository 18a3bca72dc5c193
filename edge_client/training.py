"""Local training and evaluation of the global model on one device (CPU or CUDA)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.evaluation import Scores, classification_scores
from model.plan import TrainingPlan


class TrainingInterrupted(Exception):
    """Stop was requested in the middle of local training."""


@dataclass(frozen=True)
class TrainResult:
    num_samples: int
    loss: float
    accuracy: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    scores: Scores


def pick_device(requested: str) -> torch.device:
    """'auto' takes CUDA when present, else the CPU; anything else is used as given."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA device is available")
    return device


def train_local(
    model: nn.Module, x: np.ndarray, y: np.ndarray, plan: TrainingPlan, device: torch.device, seed: int,
    stop: threading.Event | None = None,
) -> TrainResult:
    """Train ``model`` in place for plan.local_epochs over (x, y); returns loss and accuracy of the last epoch.

    With ``plan.proximal_mu`` > 0 (FedProx) the weights are also pulled toward where they started.

    ``seed`` fixes batch order and dropout masks, so a run can be repeated exactly.
    """
    # Dropout draws from torch's global generator: seed a private fork of it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _train(model, x, y, plan, device, seed, stop)


def _train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, plan: TrainingPlan, device: torch.device, seed: int,
    stop: threading.Event | None,
) -> TrainResult:
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    xs = torch.from_numpy(x).to(device)
    ys = torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    mu = plan.proximal_mu
    # FedProx's term mu / 2 * ||w - w0||^2 has gradient mu * (w - w0): added to each
    # gradient directly, it costs one fused op per tensor and nothing in autograd's graph.
    anchor = [p.detach().clone() for p in model.parameters()] if mu > 0 else []
    n = len(xs)
    loss_sum, correct = 0.0, 0
    for _ in range(plan.local_epochs):
        loss_sum, correct = 0.0, 0
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, plan.batch_size):
            if stop is not None and stop.is_set():
                raise TrainingInterrupted()
            idx = order[start : start + plan.batch_size]
            opt.zero_grad(set_to_none=True)
            logits = model(xs[idx])
            loss = loss_fn(logits, ys[idx])
            loss.backward()
            for p, w0 in zip(model.parameters(), anchor):
                if p.grad is not None:
                    p.grad.add_(p.detach() - w0, alpha=mu)
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(dim=1) == ys[idx]).sum())
    return TrainResult(num_samples=n, loss=loss_sum / n, accuracy=correct / n)


@torch.inference_mode()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int, device: torch.device) -> EvalResult:
    """Mean cross-entropy and classification scores of ``model`` on (x, y)."""
    model.to(device).eval()
    loss_sum = 0.0
    preds = []
    for start in range(0, len(x), 256):
        xb = torch.from_numpy(x[start : start + 256]).to(device)
        yb = torch.from_numpy(y[start : start + 256]).to(device)
        logits = model(xb)
        loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        preds.append(logits.argmax(dim=1).cpu().numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return EvalResult(loss=loss_sum / max(1, len(x)), scores=classification_scores(y, pred, num_classes))
