"""Compiled inner loops of the linear policies and of exploration.

Why compiled: a decision touches K×d² numbers (K = 4, d ≈ 20 here), far too few for numpy to
amortise its per-call overhead (~1 µs a call, a dozen calls a round). Numba runs the same
loops in ~1 µs per round in total. These functions are pure (arrays in, arrays out or updated
in place), hold no state and draw no random numbers: the uniform draw is passed in, so the
caller's seeded `numpy.random.Generator` stays the only source of randomness.

Every kernel here has a plain numpy twin in the tests that it is checked against.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "epsilon_greedy_probabilities",
    "linear_scores",
    "rank_one_update",
    "sample_index",
]


@njit(cache=True, nogil=True)
def linear_scores(A_inv, theta, x, alpha, score, mean, width):  # type: ignore[no-untyped-def]
    """mean[k] = θ_kᵀx, width[k] = α√(xᵀA_k⁻¹x) and score = mean + width, written in place."""
    n_actions, n_features = theta.shape
    for k in range(n_actions):
        m = 0.0
        q = 0.0
        for i in range(n_features):
            s = 0.0
            for j in range(n_features):
                s += A_inv[k, i, j] * x[j]
            q += s * x[i]
            m += theta[k, i] * x[i]
        mean[k] = m
        # q ≥ 0 in exact arithmetic (A⁻¹ is positive definite); rounding can make it -1e-17.
        width[k] = alpha * math.sqrt(q) if q > 0.0 else 0.0
        score[k] = m + width[k]


@njit(cache=True, nogil=True)
def rank_one_update(A, A_inv, b, theta, x, a, weight, weighted_reward, gamma):  # type: ignore[no-untyped-def]
    """A ← A + w·x xᵀ and b ← b + s·x for action `a` (s = w·r), in place, in O(d²).

    An observed reward r with weight w is (w, s = w·r). A correction of an already learned
    reward by δ (aggregation "sum") is (w = 0, s = δ): b moves, A does not, because the
    context was already counted once.

    With a forgetting factor γ < 1 the action's statistics are first discounted, A ← γA and
    b ← γb (so A⁻¹ ← A⁻¹/γ and θ is unchanged): old evidence fades, new evidence weighs more.
    Then, by Sherman–Morrison with u = A⁻¹x and q = xᵀu,
    A⁻¹ ← A⁻¹ − w·u uᵀ / (1 + w·q) and θ ← θ + u·(s − w·θᵀx) / (1 + w·q),
    which equals the new A⁻¹b without the d² product.

    Returns False, touching nothing, if `x` holds a NaN or an infinity.
    """
    n_features = x.shape[0]
    for i in range(n_features):
        if not math.isfinite(x[i]):
            return False
    if gamma != 1.0:
        inv_gamma = 1.0 / gamma
        for i in range(n_features):
            b[a, i] *= gamma
            for j in range(n_features):
                A[a, i, j] *= gamma
                A_inv[a, i, j] *= inv_gamma
    u = np.empty(n_features)
    q = 0.0
    m = 0.0
    for i in range(n_features):
        s = 0.0
        for j in range(n_features):
            s += A_inv[a, i, j] * x[j]
        u[i] = s
        q += s * x[i]
        m += theta[a, i] * x[i]
    denominator = 1.0 + weight * q
    c = weight / denominator
    step = (weighted_reward - weight * m) / denominator
    for i in range(n_features):
        if weight != 0.0:
            ui = u[i] * c
            wxi = weight * x[i]
            for j in range(n_features):
                A_inv[a, i, j] -= ui * u[j]
                A[a, i, j] += wxi * x[j]
        theta[a, i] += u[i] * step
        b[a, i] += weighted_reward * x[i]
    return True


@njit(cache=True, nogil=True)
def epsilon_greedy_probabilities(scores, eligible, epsilon, tie_tolerance, probabilities):  # type: ignore[no-untyped-def]
    """ε spread evenly over the eligible actions, 1-ε split among the tied best ones.

    Returns the number of eligible actions (0 means nothing can be served).
    """
    n_actions = scores.shape[0]
    n_eligible = 0
    best = -math.inf
    for k in range(n_actions):
        probabilities[k] = 0.0
        if eligible[k]:
            n_eligible += 1
            if scores[k] > best:
                best = scores[k]
    if n_eligible == 0:
        return 0
    threshold = best - tie_tolerance * max(1.0, abs(best))
    n_best = 0
    for k in range(n_actions):
        if eligible[k] and scores[k] >= threshold:
            n_best += 1
    floor = epsilon / n_eligible
    share = (1.0 - epsilon) / n_best
    for k in range(n_actions):
        if eligible[k]:
            probabilities[k] = floor + (share if scores[k] >= threshold else 0.0)
    return n_eligible


@njit(cache=True, nogil=True)
def sample_index(probabilities, u):  # type: ignore[no-untyped-def]
    """Inverse-CDF draw: the first k with cumsum(p)[k] > u; skips zero-probability actions."""
    total = 0.0
    last = -1
    for k in range(probabilities.shape[0]):
        if probabilities[k] > 0.0:
            total += probabilities[k]
            last = k
            if u < total:
                return k
    return last  # u within rounding of 1.0: the last action that can be served
