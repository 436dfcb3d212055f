"""The system the surrogate learns: a damped harmonic oscillator, x'' + 2 zeta omega x' + omega^2 x = 0.

Parameters per sample: omega (natural frequency, 1..4 rad/s), zeta (damping ratio, 0.05..0.6: underdamped),
x0 (initial displacement, -1..1), v0 (initial velocity, -2..2). The response is x(t) at TIMES (exact solution)."""

from __future__ import annotations

import numpy as np

TIMES = np.linspace(0.0, 4.0, 32)
LOW = np.array([1.0, 0.05, -1.0, -2.0])
HIGH = np.array([4.0, 0.6, 1.0, 2.0])
PARAMS = ("omega", "zeta", "x0", "v0")


def response(params: np.ndarray, times: np.ndarray = TIMES) -> np.ndarray:
    """x(t) for each row (omega, zeta, x0, v0): shape (n, len(times))."""
    omega, zeta, x0, v0 = (params[:, i:i + 1] for i in range(4))
    wd = omega * np.sqrt(1.0 - zeta ** 2)
    t = times[None, :]
    return np.exp(-zeta * omega * t) * (x0 * np.cos(wd * t) + (v0 + zeta * omega * x0) / wd * np.sin(wd * t))


def sample(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n random systems and their responses: (x: (n, 4) parameters, y: (n, 32) displacements), float32."""
    params = LOW + (HIGH - LOW) * rng.random((n, 4))
    return params.astype(np.float32), response(params).astype(np.float32)
