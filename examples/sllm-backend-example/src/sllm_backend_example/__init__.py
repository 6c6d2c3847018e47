"""An example sllm backend plugin: `example`.

GELU (forward and backward) and the residual add are implemented here, in float32 with
numpy's in-place ufuncs (one scratch array, no other temporaries); every other kernel of the
contract is left to sllm's numpy reference by naming it in `reference_kernels`.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

import sllm
from sllm.backends import KERNELS
from sllm.backends.base import Backend

OWN_KERNELS = frozenset({"gelu_fwd", "gelu_bwd", "residual_fwd"})
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class ExampleBackend(Backend):
    """GELU and residual in fused float32 numpy; the rest is the numpy reference."""

    name: ClassVar[str] = "example"
    priority: ClassVar[int] = 40  # below numpy (50): `auto` never picks it by itself
    reference_kernels: ClassVar[frozenset[str]] = frozenset(KERNELS) - OWN_KERNELS

    @classmethod
    def probe(cls) -> dict[str, Any]:
        """Runs wherever numpy does; raise here, with the reason, when the backend cannot run."""
        return {"kernels": ", ".join(sorted(OWN_KERNELS)), "numpy": np.__version__}

    def gelu_fwd(self, out: np.ndarray, inp: np.ndarray) -> None:
        """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), out may alias inp."""
        t = np.multiply(inp, inp)
        t *= 0.044715 * SQRT_2_OVER_PI
        t += SQRT_2_OVER_PI
        t *= inp
        np.tanh(t, out=t)
        t += 1.0
        t *= 0.5
        np.multiply(t, inp, out=out)

    def gelu_bwd(self, dinp: np.ndarray, dout: np.ndarray, inp: np.ndarray) -> None:
        """dinp = dout * gelu'(inp); dinp may alias dout."""
        x2 = np.multiply(inp, inp)
        th = x2 * (0.044715 * SQRT_2_OVER_PI)
        th += SQRT_2_OVER_PI
        th *= inp
        np.tanh(th, out=th)                     # tanh(u)
        # gelu' = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        x2 *= 3 * 0.044715 * SQRT_2_OVER_PI
        x2 += SQRT_2_OVER_PI                    # du/dx
        x2 *= inp
        sech2 = np.multiply(th, th)
        np.subtract(1.0, sech2, out=sech2)      # 1 - t^2
        x2 *= sech2
        th += 1.0
        th += x2
        th *= 0.5
        np.multiply(dout, th, out=dinp)

    def residual_fwd(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """out = a + b."""
        np.add(a, b, out=out)


@sllm.hookimpl
def register_backends(register):
    """Register the example backend with sllm."""
    register(ExampleBackend)
