"""Compiled inner loops of the linear policies and of exploration.

Why compiled: a decision touches K×d² numbers (K = 4, d ≈ 20 here), far too few for numpy to
amortise its per-call overhead (~1 µs a call, a dozen calls a round). Numba runs the same
loops in ~1 µs per round in total. These functions are pure (arrays in, arrays out or updated
in place), hold no state and draw no random numbers: the uniform draw is passed in, so the
caller's seeded `numpy.random.Generator` stays the only source of randomness.

Every kernel here has a plain numpy twin in the tests that it is checked against (within
a tolerance: numpy's BLAS and SIMD loops round in their own order).

Floating point: the linear-algebra kernels (`linear_scores`, `rank_one_update` and the fused
kernels built on them) are compiled with ``fastmath={"reassoc", "contract"}``. Reassociation
lets LLVM vectorise their dot products (a strict left-to-right sum cannot be split into SIMD
lanes: at K = 50, d = 50 `linear_scores` took ~76 µs strict and ~19 µs so, numpy's matmul
~28 µs); contraction fuses a·b + c into one FMA. Both change only the rounding (~1e-16
relative). The other fast-math licences are left out on purpose: without ``nnan``/``ninf``
the compiler may not assume away NaN or infinity, so the `math.isfinite` guards and the
``q > 0.0`` test keep their meaning. The result is deterministic for given inputs on a
given CPU, but the vector width (AVX2, AVX-512) and the use of FMA are chosen for the CPU
that compiles: replicas that must agree bit for bit should run on the same instruction set.
The kernels without fast-math are strict IEEE 754 code: one result on every CPU.

Each call from Python into a numba function costs ~0.3-0.7 µs of argument checking and
unboxing (more with more array arguments), a good part of a round at K = 4. So the serving hot
path has fused kernels that do in one call what would otherwise take two or more
(`linear_epsilon_greedy`, `ridge_update`). They call the same kernels, but LLVM inlines a
fast-math kernel into its caller and may schedule its reassociation there otherwise, so a
fused result equals the separate calls' to rounding (~1e-16 relative; tested to 1e-13), not
by construction bit for bit. Every replica runs the same kernel for the same call, so
replicas on one instruction set still agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "AUTO_SETTINGS",
    "BATCH_BLOCK",
    "LINEAR_FASTMATH",
    "argmax_frequencies",
    "auto_choose",
    "auto_credit",
    "auto_epsilon_greedy",
    "auto_epsilon_greedy_batch",
    "auto_learn",
    "auto_learn_rows",
    "discounted_update",
    "epsilon_greedy_probabilities",
    "hybrid_add",
    "hybrid_refresh",
    "hybrid_scores",
    "igw_probabilities",
    "linear_epsilon_greedy",
    "linear_epsilon_greedy_batch",
    "linear_scores",
    "rank_one_update",
    "ridge_add_rows",
    "ridge_refresh",
    "ridge_update",
    "sample_index",
    "sample_indices",
    "softmax_probabilities",
    "spd_inverse",
]

#: The fast-math flags of the linear kernels (see the module docstring). A set of LLVM flags,
#: not ``True``: ``True`` would also grant nnan/ninf and void the finiteness guards.
LINEAR_FASTMATH = frozenset({"reassoc", "contract"})


# -- shared loops -------------------------------------------------------------------------
# Small @njit helpers the kernels below call. Numba compiles a call between @njit functions
# to a direct call that LLVM inlines, so they cost nothing on the hot path (checked with
# `benchmarks.bench_speed`), and their floating point is theirs: a helper without fast-math
# stays strict inside a fast-math caller.


@njit(cache=True, nogil=True)
def _all_finite(x):  # type: ignore[no-untyped-def]
    """Whether every entry of the vector `x` is finite (no NaN, no infinity)."""
    for i in range(x.shape[0]):  # noqa: SIM110 - a plain loop for numba
        if not math.isfinite(x[i]):
            return False
    return True


@njit(cache=True, nogil=True)
def _eligible_best(scores, eligible, probabilities):  # type: ignore[no-untyped-def]
    """Zero `probabilities`; return the number of eligible actions and their best score."""
    n_eligible = 0
    best = -math.inf
    for k in range(scores.shape[0]):
        probabilities[k] = 0.0
        if eligible[k]:
            n_eligible += 1
            if scores[k] > best:
                best = scores[k]
    return n_eligible, best


@njit(cache=True, nogil=True)
def _tie_threshold(best, tie_tolerance):  # type: ignore[no-untyped-def]
    """The score from which an action ties with `best` (a relative tolerance, at least 1)."""
    return best - tie_tolerance * max(1.0, abs(best))


@njit(cache=True, nogil=True)
def _count_at_least(scores, eligible, threshold):  # type: ignore[no-untyped-def]
    """The number of eligible actions whose score is at least `threshold`."""
    n = 0
    for k in range(scores.shape[0]):
        if eligible[k] and scores[k] >= threshold:
            n += 1
    return n


@njit(cache=True, nogil=True)
def _matvec(M, v, out):  # type: ignore[no-untyped-def]
    """out ← M v (a strict left-to-right sum per row)."""
    n, m = M.shape
    for i in range(n):
        t = 0.0
        for j in range(m):
            t += M[i, j] * v[j]
        out[i] = t


# -- kernels -------------------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=set(LINEAR_FASTMATH))
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


@njit(cache=True, nogil=True, fastmath=set(LINEAR_FASTMATH))
def rank_one_update(A, A_inv, b, theta, x, a, weight, weighted_reward):  # type: ignore[no-untyped-def]
    """A ← A + w·x xᵀ and b ← b + s·x for action `a` (s = w·r), in place, in O(d²).

    An observed reward r with weight w is (w, s = w·r). A correction of an already learned
    reward by δ (aggregation "sum") is (w = 0, s = δ): b moves, A does not, because the
    context was already counted once.

    By Sherman–Morrison with u = A⁻¹x and q = xᵀu,
    A⁻¹ ← A⁻¹ − w·u uᵀ / (1 + w·q) and θ ← θ + u·(s − w·θᵀx) / (1 + w·q),
    which equals the new A⁻¹b without the d² product. (A forgetting factor γ < 1 is not
    a rank-one change once the ridge prior is kept, so it is handled by an exact refresh in
    `banditrec.policies.ridge`, not here.)

    Returns False, touching nothing, if `x` holds a NaN or an infinity.
    """
    if not _all_finite(x):
        return False
    n_features = x.shape[0]
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
def ridge_update(A, A_inv, b, theta, x, a, weight, weighted_reward, n_updates, since_refresh):  # type: ignore[no-untyped-def]
    """`rank_one_update`, then the counters, in one call from Python.

    On success ``n_updates[a]`` and ``since_refresh[a]`` grow by one and the new
    ``since_refresh[a]`` is returned (the caller compares it with its `refresh_every`, which
    may be any Python number). Returns −1, touching nothing, if `x` holds a NaN or infinity.
    """
    if not rank_one_update(A, A_inv, b, theta, x, a, weight, weighted_reward):
        return -1
    n_updates[a] += 1
    since_refresh[a] += 1
    return since_refresh[a]


@njit(cache=True, nogil=True)
def epsilon_greedy_probabilities(scores, eligible, epsilon, tie_tolerance, probabilities):  # type: ignore[no-untyped-def]
    """ε spread evenly over the eligible actions, 1-ε split among the tied best ones.

    Returns the number of eligible actions (0 means nothing can be served).
    """
    n_eligible, best = _eligible_best(scores, eligible, probabilities)
    if n_eligible == 0:
        return 0
    threshold = _tie_threshold(best, tie_tolerance)
    n_best = _count_at_least(scores, eligible, threshold)
    n_actions = scores.shape[0]
    floor = epsilon / n_eligible
    share = (1.0 - epsilon) / n_best
    for k in range(n_actions):
        if eligible[k]:
            probabilities[k] = floor + (share if scores[k] >= threshold else 0.0)
    return n_eligible


@njit(cache=True, nogil=True)
def linear_epsilon_greedy(A_inv, theta, x, alpha, eligible, epsilon, tie_tolerance, out):  # type: ignore[no-untyped-def]
    """`linear_scores` and `epsilon_greedy_probabilities` in one call from Python.

    out (4, K) receives the score, mean and width rows and, in row 3, the probabilities.
    Returns the number of eligible actions (0 means nothing can be served).
    """
    linear_scores(A_inv, theta, x, alpha, out[0], out[1], out[2])
    return epsilon_greedy_probabilities(out[0], eligible, epsilon, tie_tolerance, out[3])


#: Rows scored together by `linear_epsilon_greedy_batch`: their features stay in L1 cache.
BATCH_BLOCK = 64


@njit(cache=True, nogil=True, fastmath=set(LINEAR_FASTMATH))
def _axpy(a, x, y):  # type: ignore[no-untyped-def]
    """y ← y + a·x (vectors of one length)."""
    for r in range(y.shape[0]):
        y[r] += a * x[r]


@njit(cache=True, nogil=True, fastmath=set(LINEAR_FASTMATH))
def _quadratic_step(s, x, t, q, m):  # type: ignore[no-untyped-def]
    """q ← q + s·x and m ← m + t·x, elementwise."""
    for r in range(s.shape[0]):
        q[r] += s[r] * x[r]
        m[r] += t * x[r]


@njit(cache=True, nogil=True, fastmath=set(LINEAR_FASTMATH))
def linear_epsilon_greedy_batch(A_inv, theta, X, alpha, eligible, epsilon, tie_tolerance, out):  # type: ignore[no-untyped-def]
    """`linear_epsilon_greedy` for every row of X (n, d), row i under its mask eligible[i].

    out (4, n, K) receives the score, mean and width matrices and, in out[3], the
    probabilities: one call from Python for a whole batch of decisions.

    The scores are the same sums as `linear_scores`', in another order: for a block of
    `BATCH_BLOCK` rows at a time and one action at a time, ``s = A_k⁻¹x`` is built as
    ``Σ_j A_k⁻¹[i, j]·x_j`` for all rows of the block at once, so the innermost loop runs
    along the rows (long, contiguous, vectorised, no horizontal sums) instead of along
    the d features of one row. At K = 4, d = 21 that is ~1.6x faster than the
    single-decision loop per row; at K = 50, d = 50 as fast. The result equals the single
    path's to rounding (~1e-13 relative at most, measured), so the ε-greedy probabilities,
    which depend on the scores only through which of them tie with the best, are the same
    unless two scores lie within that rounding of the tie tolerance. Actions with identical
    statistics (the prior) get identical scores, so exact ties stay ties.
    Returns -1, or the first row with no eligible action.
    """
    n_rows = X.shape[0]
    n_actions, n_features = theta.shape
    XT = np.ascontiguousarray(X.T)
    s_block = np.empty(BATCH_BLOCK)
    q_block = np.empty(BATCH_BLOCK)
    m_block = np.empty(BATCH_BLOCK)
    for start in range(0, n_rows, BATCH_BLOCK):
        stop = min(start + BATCH_BLOCK, n_rows)
        width = stop - start
        s, q, m = s_block[:width], q_block[:width], m_block[:width]
        for k in range(n_actions):
            q[:] = 0.0
            m[:] = 0.0
            for i in range(n_features):
                s[:] = 0.0
                for j in range(n_features):
                    _axpy(A_inv[k, i, j], XT[j, start:stop], s)
                _quadratic_step(s, XT[i, start:stop], theta[k, i], q, m)
            for r in range(width):
                out[1, start + r, k] = m[r]
                w = alpha * math.sqrt(q[r]) if q[r] > 0.0 else 0.0
                out[2, start + r, k] = w
                out[0, start + r, k] = m[r] + w
    for r in range(n_rows):
        if (
            epsilon_greedy_probabilities(out[0, r], eligible[r], epsilon, tie_tolerance, out[3, r])
            == 0
        ):
            return r
    return -1


@njit(cache=True, nogil=True, fastmath=set(LINEAR_FASTMATH))
def ridge_add_rows(A, b, X, actions, a_weights, b_weights):  # type: ignore[no-untyped-def]
    """A[a] += w·x xᵀ and b[a] += s·x for every row (x, a, w, s) of a batch, in place.

    The sums of `banditrec.policies.ridge.RidgePolicy._learn_batch` (w = a_weights[r],
    s = b_weights[r]); the caller checks the rows (finite, actions in range) first. Only
    the lower triangle of each A is summed, then copied to the upper one for the actions
    the batch touched: A is symmetric, and half the products are saved.
    """
    n_actions, n_features = b.shape
    touched = np.zeros(n_actions, dtype=np.bool_)
    for r in range(X.shape[0]):
        a = actions[r]
        w = a_weights[r]
        s = b_weights[r]
        for i in range(n_features):
            b[a, i] += s * X[r, i]
        if w != 0.0:
            touched[a] = True
            for i in range(n_features):
                wxi = w * X[r, i]
                for j in range(i + 1):
                    A[a, i, j] += wxi * X[r, j]
    for a in range(n_actions):
        if touched[a]:
            for i in range(n_features):
                for j in range(i):
                    A[a, j, i] = A[a, i, j]


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


@njit(cache=True, nogil=True)
def sample_indices(probabilities, uniforms, out):  # type: ignore[no-untyped-def]
    """`sample_index` of every row of probabilities (n, K) with its uniform, into out (n,)."""
    for r in range(probabilities.shape[0]):
        out[r] = sample_index(probabilities[r], uniforms[r])


@njit(cache=True, nogil=True)
def softmax_probabilities(scores, eligible, temperature, epsilon, probabilities):  # type: ignore[no-untyped-def]
    """p ∝ exp(score / τ) over the eligible actions, then mixed with an ε floor.

    The best eligible score is subtracted before exponentiating, so no exponent is positive
    and nothing overflows however small τ is. Returns the number of eligible actions.
    """
    n_eligible, best = _eligible_best(scores, eligible, probabilities)
    if n_eligible == 0:
        return 0
    n_actions = scores.shape[0]
    total = 0.0
    for k in range(n_actions):
        if eligible[k]:
            e = math.exp((scores[k] - best) / temperature)
            probabilities[k] = e
            total += e  # ≥ 1: the best action contributes exp(0)
    floor = epsilon / n_eligible
    for k in range(n_actions):
        if eligible[k]:
            probabilities[k] = (1.0 - epsilon) * probabilities[k] / total + floor
    return n_eligible


@njit(cache=True, nogil=True)
def igw_probabilities(scores, eligible, gamma, epsilon, tie_tolerance, probabilities):  # type: ignore[no-untyped-def]
    """Inverse-gap weighting (Foster & Rakhlin 2020) over the eligible actions, ε-mixed.

    With n eligible actions and the best score ŷ*, every action a that is not (tied with)
    the best gets 1 / (n + γ·(ŷ* − ŷ_a)); the rest of the mass is split equally among the
    actions tied with the best, so each of them keeps at least 1/n.
    Returns the number of eligible actions.
    """
    n_eligible, best = _eligible_best(scores, eligible, probabilities)
    if n_eligible == 0:
        return 0
    threshold = _tie_threshold(best, tie_tolerance)
    n_actions = scores.shape[0]
    n_best = 0
    rest = 0.0
    for k in range(n_actions):
        if eligible[k]:
            if scores[k] >= threshold:
                n_best += 1
            else:
                p = 1.0 / (n_eligible + gamma * (best - scores[k]))
                probabilities[k] = p
                rest += p
    share = (1.0 - rest) / n_best
    floor = epsilon / n_eligible
    for k in range(n_actions):
        if eligible[k]:
            if scores[k] >= threshold:
                probabilities[k] = share
            probabilities[k] = (1.0 - epsilon) * probabilities[k] + floor
    return n_eligible


@njit(cache=True, nogil=True)
def argmax_frequencies(mean, scale, normals, eligible, epsilon, tie_tolerance, frequencies):  # type: ignore[no-untyped-def]
    """Share of M Gaussian draws in which each eligible action has the largest score, ε-mixed.

    Draw m scores action k as ``mean[k] + scale[k]·normals[m, k]`` (normals: (M, K) standard
    normal). A draw whose best scores tie (within a relative `tie_tolerance`) gives each tied
    action an equal part of its 1/M: the Monte Carlo twin of ε-greedy's random tie-break.
    The shares are then mixed with the floor: p ← (1 − ε)·p + ε / n_eligible.
    Returns the number of eligible actions.
    """
    n_draws, n_actions = normals.shape
    n_eligible, _ = _eligible_best(mean, eligible, frequencies)  # (the best mean is not used)
    if n_eligible == 0:
        return 0
    row = np.empty(n_actions)
    for m in range(n_draws):
        best = -math.inf
        for k in range(n_actions):
            row[k] = mean[k] + scale[k] * normals[m, k]
            if eligible[k] and row[k] > best:
                best = row[k]
        threshold = _tie_threshold(best, tie_tolerance)
        n_best = _count_at_least(row, eligible, threshold)
        share = (1.0 - epsilon) / (n_best * n_draws)
        for k in range(n_actions):
            if eligible[k] and row[k] >= threshold:
                frequencies[k] += share
    floor = epsilon / n_eligible
    for k in range(n_actions):
        if eligible[k]:
            frequencies[k] += floor
    return n_eligible


@njit(cache=True, nogil=True)
def hybrid_scores(A_inv, B, b, A0_inv, beta, x, z, alpha, score, mean, width):  # type: ignore[no-untyped-def]
    """Hybrid LinUCB scores (Li et al. 2010, Algorithm 2), written in place.

    With u = A_a⁻¹x and v = B_aᵀu, the paper's
    s = zᵀA₀⁻¹z − 2zᵀA₀⁻¹B_aᵀA_a⁻¹x + xᵀA_a⁻¹x + xᵀA_a⁻¹B_aA₀⁻¹B_aᵀA_a⁻¹x
    is (z − v)ᵀA₀⁻¹(z − v) + xᵀu, and the mean zᵀβ + xᵀθ_a with θ_a = A_a⁻¹(b_a − B_aβ)
    is zᵀβ + uᵀb_a − vᵀβ: O(d² + dk + k²) per action, θ_a never formed.
    """
    n_actions, d = b.shape
    k_shared = beta.shape[0]
    shared_mean = 0.0
    for j in range(k_shared):
        shared_mean += z[j] * beta[j]
    u = np.empty(d)
    w = np.empty(k_shared)
    # The u = A_a⁻¹x, q = xᵀu loop is that of `rank_one_update` on purpose, not a shared
    # helper: that one is fast-math and this one strict (a shared body would change the
    # rounding of one of them), and each folds its own third sum (θᵀx, uᵀb) into the loop.
    for a in range(n_actions):
        q = 0.0
        ub = 0.0
        for i in range(d):
            s = 0.0
            for j in range(d):
                s += A_inv[a, i, j] * x[j]
            u[i] = s
            q += s * x[i]
            ub += s * b[a, i]
        vb = 0.0
        for j in range(k_shared):
            t = 0.0
            for i in range(d):
                t += B[a, i, j] * u[i]
            w[j] = z[j] - t
            vb += t * beta[j]
        for j in range(k_shared):
            s = 0.0
            for m in range(k_shared):
                s += A0_inv[j, m] * w[m]
            q += w[j] * s
        mean[a] = shared_mean + ub - vb
        width[a] = alpha * math.sqrt(q) if q > 0.0 else 0.0
        score[a] = mean[a] + width[a]


@njit(cache=True, nogil=True)
def spd_inverse(A, out):  # type: ignore[no-untyped-def]
    """out ← A⁻¹ for a symmetric positive definite A, by Cholesky: A = LLᵀ, A⁻¹ = L⁻ᵀL⁻¹.

    The result is exactly symmetric. Returns False (out unspecified) if A is not positive
    definite to working precision.
    """
    d = A.shape[0]
    L = np.zeros((d, d))
    for j in range(d):
        s = A[j, j]
        for k in range(j):
            s -= L[j, k] * L[j, k]
        if not s > 0.0:  # also catches NaN
            return False
        L[j, j] = math.sqrt(s)
        for i in range(j + 1, d):
            t = A[i, j]
            for k in range(j):
                t -= L[i, k] * L[j, k]
            L[i, j] = t / L[j, j]
    # M = L⁻¹, lower triangular, by forward substitution column by column.
    M = np.zeros((d, d))
    for j in range(d):
        M[j, j] = 1.0 / L[j, j]
        for i in range(j + 1, d):
            t = 0.0
            for k in range(j, i):
                t -= L[i, k] * M[k, j]
            M[i, j] = t / L[i, i]
    for i in range(d):
        for j in range(i + 1):
            t = 0.0
            for k in range(i, d):  # M[k, i] = 0 for k < i
                t += M[k, i] * M[k, j]
            out[i, j] = t
            out[j, i] = t
    return True


@njit(cache=True, nogil=True)
def ridge_refresh(A, b, A_inv, theta, actions):  # type: ignore[no-untyped-def]
    """A_k⁻¹ and θ_k = A_k⁻¹b_k recomputed exactly for every k in `actions`, in place.

    Returns False if some A_k is not positive definite (nothing is then guaranteed).
    """
    for a in actions:
        if not spd_inverse(A[a], A_inv[a]):
            return False
        _matvec(A_inv[a], b[a], theta[a])
    return True


@njit(cache=True, nogil=True)
def discounted_update(A, b, x, a, weight, weighted_reward, gamma, ridge):  # type: ignore[no-untyped-def]
    """One learn event under forgetting factor γ, on A and b only, in place.

    Every action decays towards the prior, A ← γA + (1 − γ)λI and b ← γb, then action `a`
    adds w·x xᵀ and s·x. Returns False, touching nothing, if `x` holds a NaN or infinity.
    """
    if not _all_finite(x):
        return False
    n_actions, n_features = b.shape
    prior = (1.0 - gamma) * ridge
    for k in range(n_actions):
        for i in range(n_features):
            b[k, i] *= gamma
            for j in range(n_features):
                A[k, i, j] *= gamma
            A[k, i, i] += prior
    for i in range(n_features):
        b[a, i] += weighted_reward * x[i]
        wxi = weight * x[i]
        for j in range(n_features):
            A[a, i, j] += wxi * x[j]
    return True


@njit(cache=True, nogil=True)
def hybrid_add(A_shared, b_shared, A, B, b, x, z, a, weight, weighted_reward):  # type: ignore[no-untyped-def]
    """Add one observation to hybrid LinUCB's sums, in place (z: the shared features).

    A_shared += w·z zᵀ, b_shared += s·z, A_a += w·x xᵀ, B_a += w·x zᵀ, b_a += s·x, with s = w·r
    (w = 0 for a correction). Returns False, touching nothing, if x or z is not finite.
    """
    if not (_all_finite(x) and _all_finite(z)):
        return False
    d = x.shape[0]
    k_shared = z.shape[0]
    for j in range(k_shared):
        b_shared[j] += weighted_reward * z[j]
        if weight != 0.0:
            for m in range(k_shared):
                A_shared[j, m] += weight * z[j] * z[m]
    for i in range(d):
        b[a, i] += weighted_reward * x[i]
        if weight != 0.0:
            wxi = weight * x[i]
            for m in range(d):
                A[a, i, m] += wxi * x[m]
            for j in range(k_shared):
                B[a, i, j] += wxi * z[j]
    return True


@njit(cache=True, nogil=True)
def hybrid_refresh(A_shared, b_shared, A, B, b, actions, A_inv, C, e, A0, b0, A0_inv, beta):  # type: ignore[no-untyped-def]
    """Hybrid LinUCB's derived arrays, exactly, after the statistics of `actions` changed.

    For each a in `actions`: A_a⁻¹, C_a = B_aᵀA_a⁻¹B_a and e_a = B_aᵀA_a⁻¹b_a. Then for the
    shared part: A₀ = A_shared − Σ_a C_a, b₀ = b_shared − Σ_a e_a, A₀⁻¹ and β = A₀⁻¹b₀.
    Returns False if a matrix is not positive definite.
    """
    n_actions, d = b.shape
    k_shared = b_shared.shape[0]
    G = np.empty((d, k_shared))  # A_a⁻¹B_a
    g = np.empty(d)  # A_a⁻¹b_a
    for a in actions:
        if not spd_inverse(A[a], A_inv[a]):
            return False
        _matvec(A_inv[a], b[a], g)
        for i in range(d):
            for j in range(k_shared):
                t = 0.0
                for m in range(d):
                    t += A_inv[a, i, m] * B[a, m, j]
                G[i, j] = t
        for j in range(k_shared):
            t = 0.0
            for i in range(d):
                t += B[a, i, j] * g[i]
            e[a, j] = t
            for m in range(j + 1):
                t = 0.0
                for i in range(d):
                    t += B[a, i, j] * G[i, m]
                C[a, j, m] = t
                C[a, m, j] = t
    for j in range(k_shared):
        t = b_shared[j]
        for a in range(n_actions):
            t -= e[a, j]
        b0[j] = t
        for m in range(k_shared):
            t = A_shared[j, m]
            for a in range(n_actions):
                t -= C[a, j, m]
            A0[j, m] = t
    if not spd_inverse(A0, A0_inv):
        return False
    _matvec(A0_inv, b0, beta)
    return True


# -- the self-tuning LinUCB (`banditrec.policies.auto`) ------------------------------------
# One learn event of `AutoLinUCB` scores every member (a LinUCB width) by a doubly robust
# estimate before it is learned. In Python that is a dozen numpy calls per member (37 µs a
# learn at K = 4, d = 22); here it is one crossing. The arithmetic is the Python twin's
# (`AutoLinUCB._credit`, `_choose`), in the same order where it matters; the twin stays the
# reference (other exploration rules, γ < 1) and the tests compare the two within a tolerance.
# `settings` packs the scalars (one array unboxes faster than six arguments do):
# [ε, min_epsilon_share, λ, tie_tolerance, prior_width, switch_margin] (`AUTO_SETTINGS`).

#: The order of `AutoLinUCB`'s scalars in the kernels' `settings` array.
AUTO_SETTINGS = (
    "epsilon",
    "min_epsilon_share",
    "ridge",
    "tie_tolerance",
    "prior_width",
    "switch_margin",
)


@njit(cache=True, nogil=True)
def _auto_prior_member(alphas, mean_context_sq, ridge, prior_width):  # type: ignore[no-untyped-def]
    """The widest member whose prior width α·√(mean xᵀx / λ) is ≤ `prior_width`, else the
    narrowest (`AutoLinUCB._prior_member`)."""
    scale = math.sqrt(mean_context_sq / ridge)
    chosen = -1
    narrowest = 0
    for m in range(alphas.shape[0]):
        if alphas[m] < alphas[narrowest]:
            narrowest = m
        if alphas[m] * scale <= prior_width and (chosen < 0 or alphas[m] > alphas[chosen]):
            chosen = m
    return narrowest if chosen < 0 else chosen


@njit(cache=True, nogil=True)
def auto_choose(value, value_sq, evaluated, context_sq, served, alphas, settings):  # type: ignore[no-untyped-def]
    """Serve the best member once it leads the served one by `switch_margin` standard errors
    of their paired difference; until the evidence first decides, the prior rule's member.

    ``served`` is [member, 1 once chosen by the evidence], updated in place.
    """
    n = evaluated[0]
    if n <= 0.0:
        return
    if served[1] == 0:
        served[0] = _auto_prior_member(alphas, context_sq[0] / n, settings[2], settings[4])
    if n < 2.0:
        return
    current = served[0]
    best = 0
    for m in range(1, value.shape[0]):  # the first of equal maxima, as np.argmax
        if value[m] > value[best]:
            best = m
    if best == current:
        return
    mean = (value[best] - value[current]) / n
    diff_sq = value_sq[best, best] - 2.0 * value_sq[best, current] + value_sq[current, current]
    variance = max(diff_sq / n - mean * mean, 0.0)
    if mean > settings[5] * math.sqrt(variance / n):
        served[0] = best
        served[1] = 1


@njit(cache=True, nogil=True)
def auto_credit(  # type: ignore[no-untyped-def]
    A_inv, theta, x, action, reward, weight, propensity, alphas, settings, gamma,
    value, value_sq, evaluated, context_sq, served,
):  # fmt: skip
    """Add one learn event's doubly robust estimate of every member's reward to the sums.

    Each member m serves ε-greedy over ``mean + α_m·√(xᵀA⁻¹x)`` with the shrunk floor
    ``ε·min(1, max(min_share, min_k √(xᵀA_k⁻¹x) / √(xᵀx/λ)))`` over all actions; its estimate
    is ``Σ_k π_m(k)·r̂_k + π_m(a)/p·(r − r̂_a)``. `propensity` is the logged probability of the
    action; ≤ 0 means unknown, and the served member's own probability is used. With γ < 1
    the sums decay first. Call `auto_choose` after it.
    """
    n_actions = theta.shape[0]
    n_members = alphas.shape[0]
    epsilon, min_share, ridge, tie_tolerance = settings[0], settings[1], settings[2], settings[3]
    score = np.empty(n_actions)
    mean = np.empty(n_actions)
    raw = np.empty(n_actions)
    linear_scores(A_inv, theta, x, 1.0, score, mean, raw)
    norm = 0.0
    for i in range(x.shape[0]):
        norm += x[i] * x[i]
    floor = epsilon
    if norm > 0.0:
        certainty = raw.min() / math.sqrt(norm / ridge)
        floor = epsilon * min(1.0, max(min_share, certainty))
    everyone = np.ones(n_actions, dtype=np.bool_)
    pi = np.empty((n_members, n_actions))
    for m in range(n_members):
        for k in range(n_actions):
            score[k] = mean[k] + alphas[m] * raw[k]
        epsilon_greedy_probabilities(score, everyone, floor, tie_tolerance, pi[m])
    p = propensity
    if not p > 0.0:  # unknown: the served member's own probability, recomputed
        p = max(pi[served[0], action], 1e-12)
    residual = reward - mean[action]
    estimate = np.empty(n_members)
    for m in range(n_members):
        t = 0.0
        for k in range(n_actions):
            t += pi[m, k] * mean[k]
        estimate[m] = t + pi[m, action] / p * residual
    if gamma != 1.0:
        value *= gamma
        value_sq *= gamma
        evaluated *= gamma
        context_sq *= gamma
    for m in range(n_members):  # value += w·e and value_sq += w·(e eᵀ), as the Python twin
        value[m] += weight * estimate[m]
        for j in range(n_members):
            value_sq[m, j] += weight * (estimate[m] * estimate[j])
    evaluated[0] += weight
    context_sq[0] += weight * norm


@njit(cache=True, nogil=True)
def auto_learn(  # type: ignore[no-untyped-def]
    A, A_inv, b, theta, x, action, reward, weight, propensity, alphas, settings,
    value, value_sq, evaluated, context_sq, served, n_updates, since_refresh,
):  # fmt: skip
    """One learn event of `AutoLinUCB` (γ = 1, ε-greedy) in one call from Python: score it
    for every member (`auto_credit`), choose (`auto_choose`), then learn it (`ridge_update`).

    Returns −1, touching nothing, if `x` holds a NaN or an infinity; else the action's
    updates since its refresh (the caller refreshes at its `refresh_every`).
    """
    if not _all_finite(x):
        return -1
    auto_credit(
        A_inv, theta, x, action, reward, weight, propensity, alphas, settings, 1.0,
        value, value_sq, evaluated, context_sq, served,
    )  # fmt: skip
    auto_choose(value, value_sq, evaluated, context_sq, served, alphas, settings)
    return ridge_update(
        A, A_inv, b, theta, x, action, weight, weight * reward, n_updates, since_refresh
    )


@njit(cache=True, nogil=True)
def auto_learn_rows(  # type: ignore[no-untyped-def]
    A, A_inv, b, theta, X, actions, rewards, weights, observed, propensities, alphas,
    settings, value, value_sq, evaluated, context_sq, served, n_updates, since_refresh,
    refresh_every,
):  # fmt: skip
    """`auto_learn` row by row, in order (each row is scored on the model before it), with
    the per-action refresh every `refresh_every` updates; a row not `observed` is a correction
    (b moves by the reward delta, the member sums do not). Rows must be finite (checked by the
    caller). Returns False if some A stopped being positive definite.
    """
    for i in range(actions.shape[0]):
        a = actions[i]
        if not observed[i]:
            rank_one_update(A, A_inv, b, theta, X[i], a, 0.0, rewards[i])
            continue
        since = auto_learn(
            A, A_inv, b, theta, X[i], a, rewards[i], weights[i], propensities[i], alphas,
            settings, value, value_sq, evaluated, context_sq, served, n_updates, since_refresh,
        )  # fmt: skip
        if since >= refresh_every:
            if not spd_inverse(A[a], A_inv[a]):
                return False
            _matvec(A_inv[a], b[a], theta[a])
            since_refresh[a] = 0
    return True


@njit(cache=True, nogil=True)
def auto_epsilon_greedy(A_inv, theta, x, alpha, eligible, settings, out):  # type: ignore[no-untyped-def]
    """One decision of `AutoLinUCB` (ε-greedy) in one call from Python.

    out (4, K) receives the served member's score (mean + width), mean and width (α·√q)
    rows and, in row 3, the probabilities with the shrunk floor
    ``ε·min(1, max(min_share, min_k √(xᵀA_k⁻¹x) / √(xᵀx/λ)))`` over the eligible actions
    (ε itself for x = 0). The width and score are the two IEEE operations of
    `AutoLinUCB._scores`, on the unscaled widths of `linear_scores` at α = 1. Returns the
    number of eligible actions (0 means nothing can be served).
    """
    linear_scores(A_inv, theta, x, 1.0, out[0], out[1], out[2])
    norm = 0.0
    for i in range(x.shape[0]):
        norm += x[i] * x[i]
    epsilon = settings[0]
    floor = epsilon
    if norm > 0.0:
        least = math.inf
        for k in range(theta.shape[0]):
            if eligible[k] and out[2, k] < least:
                least = out[2, k]
        if least < math.inf:
            floor = epsilon * min(1.0, max(settings[1], least / math.sqrt(norm / settings[2])))
    for k in range(theta.shape[0]):
        out[2, k] = alpha * out[2, k]
        out[0, k] = out[1, k] + out[2, k]
    return epsilon_greedy_probabilities(out[0], eligible, floor, settings[3], out[3])


@njit(cache=True, nogil=True)
def auto_epsilon_greedy_batch(A_inv, theta, X, alpha, eligible, settings, out):  # type: ignore[no-untyped-def]
    """`auto_epsilon_greedy` of every row of X (n, d) under ``eligible[i]``, in one call.

    out (4, n, K) receives the score, mean and width rows and the probabilities. Returns −1,
    or the first row with no eligible action (the rows after it are not computed).
    """
    for i in range(X.shape[0]):
        if not auto_epsilon_greedy(A_inv, theta, X[i], alpha, eligible[i], settings, out[:, i]):
            return i
    return -1
