"""Optimizers over the model's flat parameter buffer: SGD, Adam, AdamW.

Each step is one backend call over the whole buffer. Weight decay applies only to
tensors with ndim >= 2, which the layout places first (`layout.decay_count`).

JavaScript twin: sllm/web/model.js (the browser's copy; tests/test_node_parity.py checks them equal under Node).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import validate


class Optimizer:
    """Common parts: the model, the learning rate, the step count, gradient clipping, state."""

    state_buffers: tuple[str, ...] = ()

    def __init__(self, model: Any, lr: float, weight_decay: float):
        """`model`: what is updated, an SLLM or an attached LoRA adapter (SLLM.trainable():
        backend, flat_params, flat_grads, layout.total and layout.decay_count)."""
        lr = validate.check_number("lr", lr, 0.0)
        weight_decay = validate.check_number("weight_decay", weight_decay, 0.0)
        self.model, self.lr, self.weight_decay = model, float(lr), float(weight_decay)
        self.step_count = 0
        self.buffers = {name: model.backend.zeros(model.layout.total)
                        for name in self.state_buffers}

    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale the gradients so their global L2 norm is at most max_norm; return the
        norm before clipping (as torch.nn.utils.clip_grad_norm_).

        The norm is the backend's grad_norm_sq kernel (one pass, float64 sums, on the
        backend's own threads); the scaling is one in-place pass over the flat buffer.
        """
        g = self.model.flat_grads
        norm = math.sqrt(self.model.backend.grad_norm_sq(g))
        if math.isfinite(norm) and norm > max_norm:
            np.multiply(g, np.float32(max_norm / (norm + 1e-6)), out=g)
        return norm

    def step(self) -> None:
        """Apply one update from model.gradients()."""
        self.step_count += 1
        self._update()

    def _update(self) -> None:
        raise NotImplementedError("_update")

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: hyper-parameters, step count and state buffers."""
        return {"type": type(self).__name__, "lr": self.lr, "step": self.step_count,
                "buffers": {k: np.array(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""
        if state.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {state.get('type')}, not {type(self).__name__}")
        self.lr, self.step_count = float(state["lr"]), int(state["step"])
        for name, buf in self.buffers.items():
            buf[...] = state["buffers"][name]


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and L2 weight decay."""

    def __init__(self, model: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        momentum = validate.check_number("momentum", momentum, 0.0, 1.0, hi_open=True)
        self.state_buffers = ("momentum",) if momentum else ()
        super().__init__(model, lr, weight_decay)
        self.momentum = float(momentum)

    def _update(self) -> None:
        m = self.model
        m.backend.sgd_update(m.flat_params, m.flat_grads, self.buffers.get("momentum"),
                             self.lr, self.momentum, self.weight_decay, m.layout.decay_count)


class Adam(Optimizer):
    """Adam with bias correction; weight decay is L2 added to the gradient (torch.optim.Adam)."""

    state_buffers = ("m", "v")
    decoupled = False

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        self.betas = validate.check_betas(betas)
        self.eps = float(validate.check_number("eps", eps, 0.0, lo_open=True))
        super().__init__(model, lr, weight_decay)

    def _update(self) -> None:
        m = self.model
        m.backend.adam_update(m.flat_params, m.flat_grads, self.buffers["m"], self.buffers["v"],
                              self.lr, self.betas[0], self.betas[1], self.eps,
                              self.weight_decay, self.step_count, m.layout.decay_count,
                              self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW)."""

    decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(model, lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
