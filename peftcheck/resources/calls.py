"""What the speed checks and benchmarks time: one inference call, one training step."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = ["forward_call", "train_step_call", "train_batch", "gradient_reach"]


def _synchronizer(batch: dict[str, Any]) -> Callable[[], None]:
    """Waits for queued CUDA work, so a timed call includes its kernels (a no-op on the CPU)."""
    import torch

    if any(getattr(v, "is_cuda", False) for v in batch.values()):
        return torch.cuda.synchronize
    return lambda: None


def forward_call(model: Any, batch: dict[str, Any]) -> Callable[[], None]:
    """One no-grad forward of ``model`` on ``batch``."""
    import torch

    sync = _synchronizer(batch)

    def call() -> None:
        with torch.inference_mode():
            model(**batch)
        sync()

    return call


def train_batch(artifact: Any) -> dict[str, Any]:
    """The first training batch of the method (its batch size), on its device."""
    args = artifact.suite.spec.train_args(artifact.method)
    size = min(int(args["per_device_train_batch_size"]), len(artifact.data.train))
    batch = artifact.collate([artifact.data.train[i] for i in range(size)])
    return {k: v.to(artifact.device) for k, v in batch.items()}


def train_step_call(artifact: Any) -> tuple[Callable[[], None], int]:
    """One optimizer step (forward, backward, AdamW) on a copy of the trained model, on a fixed
    batch, and the batch's token count. The trained model itself is left as it is."""
    import torch

    model = copy.deepcopy(artifact.model)
    model.train()
    batch = train_batch(artifact)
    lr = float(artifact.suite.spec.train_args(artifact.method)["learning_rate"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    sync = _synchronizer(batch)

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    return step, int(batch["attention_mask"].sum())


def gradient_reach(artifact: Any) -> tuple[int, int]:
    """(trainable tensors that get a non-zero gradient, trainable tensors) from one forward and
    backward of a copy of the trained model on the timed batch: a step that trains nothing must
    not pass for a fast one."""
    model = copy.deepcopy(artifact.model)
    model.train()
    model(**train_batch(artifact)).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    reached = sum(1 for g in grads if g is not None and bool(g.detach().abs().sum() > 0))
    return reached, len(grads)
