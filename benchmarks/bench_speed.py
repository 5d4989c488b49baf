"""In-process decide + update speed: banditrec's LinUCB against numpy and MABWiser.

One command, one table::

    .venv/bin/python -m benchmarks.bench_speed            # ~40 s on 2 cores
    .venv/bin/python -m benchmarks.bench_speed --quick    # ~10 seconds, smoke test

What is measured: *online rounds per second*. Every contender reads the same seeded stream of
rows (a context ``x`` and a pre-drawn reward for every action) and, for each row, does one
full online round: score all K actions, choose one (ε-greedy, or the library's own rule),
then learn the chosen action's reward before the next row. No batching, no I/O, one process,
one thread. The contenders:

banditrec
    ``LinUCB.distribution`` → ``sample_action`` → ``LinUCB.update``, the public calls the
    engine makes (numba kernels, Sherman-Morrison updates, exact refresh every 1000 updates).
banditrec + explain
    The same round plus what ``"explain": true`` on ``POST /v1/rank`` adds: ``LinUCB.explain``
    (means, widths, θ_k[j]·x[j] of every action) and the feature → contribution mapping of
    every action in the answer. Its ratio to the row above is the cost of an explanation.
numpy Sherman-Morrison
    The reference a careful numpy user writes: ``A⁻¹`` of all actions stacked in one (K, d, d)
    array, all scores from one matmul, a rank-one update of the chosen action (it keeps A⁻¹,
    θ and b; banditrec also keeps A, for its exact refresh). Same ε-greedy rule and same
    inverse-CDF draw as banditrec, so with the same seed it serves the same actions.
numpy naive
    Textbook LinUCB (Li et al. 2010, Algorithm 1): keeps ``A`` and calls ``np.linalg.inv(A_k)``
    for every action at every decision.
MABWiser
    ``MAB(arms, LearningPolicy.LinUCB(alpha=1.0))``, used online the only way its public API
    allows: ``fit`` once on no data (sets the prior), then ``predict`` + ``partial_fit`` of a
    single row per round, with C-contiguous numpy arrays (faster than lists). Its rule is
    its own: argmax of the upper confidence bound, no ε. Each ``partial_fit`` deep-copies
    every arm's model and re-inverts the updated arm's A; that is where its time goes.

A second table (``--batch-only`` runs it alone) times batches: 1,000 contexts decided at
once, then learned at once. banditrec's ``distribution_batch`` → ``sample_actions`` →
``update_batch`` against a plain-numpy batched LinUCB (stacked matmul, vectorised ε-greedy,
``np.linalg.inv`` after each batch) at K = 4, d = 21 and K = 50, d = 50, per second of the
process's CPU time (``--batch-clock wall`` for wall time).

The per-round cost of every contender is constant in the number of rounds (nothing grows with
the history), so the slow ones are timed on fewer rounds and the rates stay comparable. Each
contender is timed `--repeats` times on a fresh model (contenders interleaved, so machine noise
hits them alike) with the garbage collector off during timing, as ``timeit`` does; the table
shows the best and the median rate, and the ratio uses the best.

A correctness cross-check runs first: one deterministic action sequence is learned by every
contender, and their coefficients θ and scores must agree with banditrec's to 1e-8.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

try:  # python -m benchmarks.<name>, or python benchmarks/<name>.py
    from benchmarks import _machine
except ImportError:
    import _machine  # type: ignore[no-redef]
from banditrec.exploration import EpsilonGreedy, sample_action, sample_actions
from banditrec.policies import LinUCB

Array = NDArray[np.float64]

ALPHA = 1.0
RIDGE = 1.0
EPSILON = 0.05
TIE_TOLERANCE = 1e-12  # banditrec's default
CHECK_TOLERANCE = 1e-8

#: (K, d, divisor): the rounds given on the command line are divided by `divisor` for the
#: heavier setting, so each setting takes a similar wall time.
SETTINGS: tuple[tuple[int, int, int], ...] = ((4, 20, 1), (50, 50, 5))

TARGET_ROUNDS_PER_S = 100_000
TARGET_RATIO_MABWISER = 30.0


# -- the stream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """Contexts X (n, d) and a pre-drawn 0/1 reward for every action, R (n, K)."""

    X: Array
    R: Array

    @property
    def n_actions(self) -> int:
        return int(self.R.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])


def make_stream(n: int, n_actions: int, n_features: int, seed: int) -> Stream:
    """A seeded logistic-linear stream: an intercept plus d-1 Gaussian features."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, n_features))
    X[:, 0] = 1.0
    X[:, 1:] = rng.normal(size=(n, n_features - 1)) / np.sqrt(n_features)
    theta_true = rng.normal(size=(n_actions, n_features))
    p = 1.0 / (1.0 + np.exp(-(X @ theta_true.T)))
    R = (rng.random((n, n_actions)) < p).astype(np.float64)
    return Stream(np.ascontiguousarray(X), R)


# -- contenders ---------------------------------------------------------------------------
# Each `run_*` function does the full online loop over the first `n` rows and writes the
# served actions into `actions`. The loops are written alike so that the loop itself costs
# every contender the same.


def _epsilon_greedy_draw(score: Array, v: float) -> int:
    """banditrec's ε-greedy rule and inverse-CDF draw in numpy, all actions eligible.

    Probabilities: ε/K each, plus (1-ε) shared by the actions tied with the best score
    (relative tolerance 1e-12). The served action is the first k with cumsum(p)[k] > v, as
    in banditrec, so the same uniform `v` gives the same action. Without a tie (the usual
    case) the cumulative sum is done in scalar arithmetic instead of arrays.
    """
    K = score.shape[0]
    floor = EPSILON / K
    greedy = 1.0 - EPSILON
    best = int(score.argmax())
    top = float(score[best])
    tied = score >= top - TIE_TOLERANCE * max(1.0, abs(top))
    if np.count_nonzero(tied) == 1:
        if v < best * floor:
            return int(v / floor)
        if v < (best + 1) * floor + greedy:
            return best
        return min(int((v - greedy) / floor), K - 1)
    probabilities = floor + tied * (greedy / np.count_nonzero(tied))
    return min(int(np.searchsorted(np.cumsum(probabilities), v, side="right")), K - 1)


def new_banditrec(K: int, d: int) -> LinUCB:
    return LinUCB(alpha=ALPHA, ridge=RIDGE, exploration=EpsilonGreedy(EPSILON)).reset(K, d)


def run_banditrec(
    policy: LinUCB, stream: Stream, n: int, rng: np.random.Generator, actions: NDArray[np.intp]
) -> None:
    X, R = stream.X, stream.R
    eligible = np.ones(stream.n_actions, dtype=bool)
    for i in range(n):
        x = X[i]
        _, probs = policy.distribution(x, eligible, rng)  # as the engine calls it
        a = sample_action(probs, rng)
        policy.update(x, a, R[i, a])
        actions[i] = a


def run_banditrec_explain(
    policy: LinUCB, stream: Stream, n: int, rng: np.random.Generator, actions: NDArray[np.intp]
) -> None:
    """`run_banditrec` plus what ``"explain": true`` adds to a rank: `LinUCB.explain` and
    the per-action feature → contribution mappings of the answer (no random draws, so it
    serves the same actions)."""
    X, R = stream.X, stream.R
    eligible = np.ones(stream.n_actions, dtype=bool)
    names = [f"x{j}" for j in range(stream.n_features)]
    for i in range(n):
        x = X[i]
        _, probs = policy.distribution(x, eligible, rng)
        explanation = policy.explain(x)
        contributions = explanation.contributions
        assert contributions is not None
        for k in range(stream.n_actions):
            dict(zip(names, contributions[k].tolist(), strict=True))
        a = sample_action(probs, rng)
        policy.update(x, a, R[i, a])
        actions[i] = a


class NumpyShermanMorrison:
    """Vectorized numpy LinUCB: stacked A⁻¹ (K, d, d), one matmul, rank-one updates.

    Written for speed the way a careful numpy user would: few calls per round, in-place
    updates, scalars as Python floats (each numpy call costs ~0.5-1.5 µs at these sizes).
    """

    def __init__(self, K: int, d: int) -> None:
        self.A_inv = np.tile(np.eye(d) / RIDGE, (K, 1, 1))
        self.b = np.zeros((K, d))
        self.theta = np.zeros((K, d))

    def scores(self, x: Array) -> tuple[Array, Array, Array, Array]:
        """UCB score, mean θᵀx, u = A⁻¹x (K, d) and q = xᵀA⁻¹x of every action."""
        u = self.A_inv @ x  # (K, d): A_k⁻¹x for every action in one call
        q = u @ x
        mean = self.theta @ x
        score = np.sqrt(q)
        score *= ALPHA
        score += mean
        return score, mean, u, q

    def learn(self, x: Array, a: int, r: float, ua: Array, qa: float, ma: float) -> None:
        """Sherman-Morrison, given ua = A_a⁻¹x, qa = xᵀA_a⁻¹x and ma = θ_aᵀx."""
        c = 1.0 / (1.0 + qa)
        A_inv, theta, b = self.A_inv[a], self.theta[a], self.b[a]
        np.subtract(A_inv, ua[:, None] * (ua * c), out=A_inv)  # A⁻¹ -= c·uuᵀ
        np.add(theta, ua * (c * (r - ma)), out=theta)  # θ += c·u·(r - θᵀx)
        np.add(b, r * x, out=b)

    def learn_one(self, x: Array, a: int, r: float) -> None:
        ua = self.A_inv[a] @ x
        self.learn(x, a, r, ua, float(ua @ x), float(self.theta[a] @ x))


def run_numpy_sm(
    model: NumpyShermanMorrison,
    stream: Stream,
    n: int,
    rng: np.random.Generator,
    actions: NDArray[np.intp],
) -> None:
    X, R = stream.X, stream.R
    for i in range(n):
        x = X[i]
        score, mean, u, q = model.scores(x)
        a = _epsilon_greedy_draw(score, rng.random())
        model.learn(x, a, float(R[i, a]), u[a], float(q[a]), float(mean[a]))
        actions[i] = a


class NumpyNaive:
    """Textbook LinUCB: keep A and b, invert every A_k at every decision."""

    def __init__(self, K: int, d: int) -> None:
        self.A = np.tile(np.eye(d) * RIDGE, (K, 1, 1))
        self.b = np.zeros((K, d))

    def scores(self, x: Array) -> Array:
        score = np.empty(self.A.shape[0])
        for k in range(self.A.shape[0]):
            A_inv = np.linalg.inv(self.A[k])
            theta = A_inv @ self.b[k]
            score[k] = theta @ x + ALPHA * np.sqrt(x @ A_inv @ x)
        return score

    def learn(self, x: Array, a: int, r: float) -> None:
        self.A[a] += np.outer(x, x)
        self.b[a] += r * x

    @property
    def theta(self) -> Array:
        return np.linalg.solve(self.A, self.b[:, :, None])[:, :, 0]


def run_numpy_naive(
    model: NumpyNaive, stream: Stream, n: int, rng: np.random.Generator, actions: NDArray[np.intp]
) -> None:
    X, R = stream.X, stream.R
    for i in range(n):
        x = X[i]
        a = _epsilon_greedy_draw(model.scores(x), rng.random())
        model.learn(x, a, R[i, a])
        actions[i] = a


def new_mabwiser(K: int, d: int, seed: int) -> Any:
    from mabwiser.mab import MAB, LearningPolicy

    mab = MAB(list(range(K)), LearningPolicy.LinUCB(alpha=ALPHA, l2_lambda=RIDGE), seed=seed)
    # Fitting on no rows sets every arm to the prior A = λI, b = 0, like the other contenders.
    mab.fit(np.array([], dtype=np.int64), np.array([]), np.empty((0, d)))
    return mab


def run_mabwiser(
    mab: Any, stream: Stream, n: int, rng: np.random.Generator, actions: NDArray[np.intp]
) -> None:
    X, R = stream.X, stream.R
    for i in range(n):
        c = X[i : i + 1]  # MABWiser takes a 2-D batch of contexts; a C-contiguous view
        a = mab.predict(c)
        mab.partial_fit(np.array([a]), np.array([R[i, a]]), c)
        actions[i] = a


#: Contexts per call of the batch contenders (as in one POST /v1/rank/batch).
BATCH = 1000

BATCH_CLOCK_NOTE = (
    "CPU time, not wall time: a batch is short enough that other jobs on a shared machine "
    "move its wall time by 2x from run to run; a multithreaded BLAS's threads all count"
)

#: (K, d, divisor) of the batch table: d = 21 is the seed's schema (20 features + bias).
BATCH_SETTINGS: tuple[tuple[int, int, int], ...] = ((4, 21, 1), (50, 50, 5))


def run_banditrec_batch(
    policy: LinUCB, stream: Stream, n: int, rng: np.random.Generator, actions: NDArray[np.intp]
) -> None:
    """Batches of `BATCH` rows: `LinUCB.distribution_batch` (one compiled call) →
    `sample_actions` → `LinUCB.update_batch` (per-action sums, one exact refresh)."""
    X, R = stream.X, stream.R
    eligible = np.ones((BATCH, stream.n_actions), dtype=bool)
    for start in range(0, n, BATCH):
        Xb = X[start : min(start + BATCH, n)]
        m = Xb.shape[0]
        _, probs = policy.distribution_batch(Xb, eligible[:m], rng)
        chosen = sample_actions(probs, rng)
        policy.update_batch(Xb, chosen, R[start + np.arange(m), chosen])
        actions[start : start + m] = chosen


class NumpyBatched:
    """Batched LinUCB in plain numpy, the way a careful numpy user writes it.

    Per batch: every context's scores from stacked matrix products (``A_k⁻¹`` applied to
    the whole batch at once), ε-greedy probabilities and inverse-CDF draws vectorised over
    the batch, then the batch learned at once: ``A_k += X_kᵀX_k``, ``b_k += X_kᵀr_k`` and
    ``A⁻¹ = np.linalg.inv(A)``, ``θ = A⁻¹b`` for all actions in one call each.
    """

    def __init__(self, K: int, d: int) -> None:
        self.A = np.tile(np.eye(d) * RIDGE, (K, 1, 1))
        self.A_inv = np.tile(np.eye(d) / RIDGE, (K, 1, 1))
        self.b = np.zeros((K, d))
        self.theta = np.zeros((K, d))

    def choose(self, X: Array, uniforms: Array) -> NDArray[np.intp]:
        K = self.A.shape[0]
        U = np.matmul(self.A_inv, X.T)  # (K, d, n): A_k⁻¹x for every action and row
        q = np.einsum("kdn,nd->nk", U, X)
        score = X @ self.theta.T + ALPHA * np.sqrt(np.maximum(q, 0.0))
        top = score.max(axis=1, keepdims=True)
        tied = score >= top - TIE_TOLERANCE * np.maximum(1.0, np.abs(top))
        probs = EPSILON / K + tied * ((1.0 - EPSILON) / tied.sum(axis=1, keepdims=True))
        chosen = (np.cumsum(probs, axis=1) > uniforms[:, None]).argmax(axis=1)
        return chosen

    def learn(self, X: Array, chosen: NDArray[np.intp], r: Array) -> None:
        for k in range(self.A.shape[0]):
            rows = chosen == k
            Xk = X[rows]
            self.A[k] += Xk.T @ Xk
            self.b[k] += r[rows] @ Xk
        self.A_inv = np.linalg.inv(self.A)
        self.theta = np.einsum("kij,kj->ki", self.A_inv, self.b)


def run_numpy_batched(
    model: NumpyBatched,
    stream: Stream,
    n: int,
    rng: np.random.Generator,
    actions: NDArray[np.intp],
) -> None:
    X, R = stream.X, stream.R
    for start in range(0, n, BATCH):
        Xb = X[start : min(start + BATCH, n)]
        m = Xb.shape[0]
        chosen = model.choose(Xb, rng.random(m))
        model.learn(Xb, chosen, R[start + np.arange(m), chosen])
        actions[start : start + m] = chosen


def mabwiser_available() -> bool:
    try:
        import mabwiser  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    new: Callable[[int, int, int], Any]  # (K, d, seed) -> a fresh model, built outside the timing
    run: Callable[[Any, Stream, int, np.random.Generator, NDArray[np.intp]], None]
    slow: bool  # timed on `--slow-rounds` rather than `--rounds`
    epsilon_greedy: bool  # same rule and draws as banditrec: must serve the same actions


CONTENDERS = (
    Contender(
        "banditrec",
        "banditrec LinUCB",
        lambda K, d, seed: new_banditrec(K, d),
        run_banditrec,
        slow=False,
        epsilon_greedy=True,
    ),
    Contender(
        "banditrec_explain",
        "banditrec LinUCB + explain",
        lambda K, d, seed: new_banditrec(K, d),
        run_banditrec_explain,
        slow=False,
        epsilon_greedy=True,
    ),
    Contender(
        "numpy_sm",
        "numpy Sherman-Morrison",
        lambda K, d, seed: NumpyShermanMorrison(K, d),
        run_numpy_sm,
        slow=False,
        epsilon_greedy=True,
    ),
    Contender(
        "numpy_naive",
        "numpy naive (inv per decision)",
        lambda K, d, seed: NumpyNaive(K, d),
        run_numpy_naive,
        slow=True,
        epsilon_greedy=True,
    ),
    Contender(
        "mabwiser",
        "MABWiser LinUCB",
        new_mabwiser,
        run_mabwiser,
        slow=True,
        epsilon_greedy=False,
    ),
)


BATCH_CONTENDERS = (
    Contender(
        "banditrec_batch",
        f"banditrec LinUCB, batches of {BATCH:,}",
        lambda K, d, seed: new_banditrec(K, d),
        run_banditrec_batch,
        slow=False,
        epsilon_greedy=True,
    ),
    Contender(
        "numpy_batched",
        f"numpy batched LinUCB, batches of {BATCH:,}",
        lambda K, d, seed: NumpyBatched(K, d),
        run_numpy_batched,
        slow=False,
        epsilon_greedy=True,
    ),
    Contender(
        "banditrec",
        "banditrec LinUCB, one by one",
        lambda K, d, seed: new_banditrec(K, d),
        run_banditrec,
        slow=False,
        epsilon_greedy=False,  # learns after every row: other actions than a batch's
    ),
)


# -- correctness cross-check ----------------------------------------------------------------


def cross_check(K: int, d: int, n: int, seed: int, mabwiser: bool = True) -> dict[str, float]:
    """Learn one fixed action sequence with every contender; max |Δ| to banditrec.

    Compares θ (all actions) and the UCB scores of 100 probe contexts. At K=4 the 5,000 rows
    give each action more than 1,000 updates, so banditrec's exact refresh happens on the way.
    """
    stream = make_stream(n + 100, K, d, seed)
    X, R, probes = stream.X[:n], stream.R[:n], stream.X[n:]
    acts = np.random.default_rng(seed + 7).integers(K, size=n)
    rewards = R[np.arange(n), acts]

    policy = new_banditrec(K, d)
    for i in range(n):
        policy.update(X[i], int(acts[i]), float(rewards[i]))
    theta = policy.theta_
    score = np.array([policy.score(x).score for x in probes])

    sm = NumpyShermanMorrison(K, d)
    naive = NumpyNaive(K, d)
    for i in range(n):
        sm.learn_one(X[i], int(acts[i]), float(rewards[i]))
        naive.learn(X[i], int(acts[i]), float(rewards[i]))
    out = {
        "numpy_sm": max(
            np.abs(sm.theta - theta).max(),
            np.abs(np.array([sm.scores(x)[0] for x in probes]) - score).max(),
        ),
        "numpy_naive": max(
            np.abs(naive.theta - theta).max(),
            np.abs(np.array([naive.scores(x) for x in probes]) - score).max(),
        ),
    }
    if mabwiser:
        mab = new_mabwiser(K, d, seed)
        mab.partial_fit(acts, rewards, X)
        beta = np.array([mab._imp.arm_to_model[k].beta for k in range(K)])
        expectations = mab.predict_expectations(probes)
        mab_score = np.array([[e[k] for k in range(K)] for e in expectations])
        out["mabwiser"] = max(np.abs(beta - theta).max(), np.abs(mab_score - score).max())
    return out


# -- timing -------------------------------------------------------------------------------


@dataclass
class Result:
    K: int
    d: int
    contender: Contender
    rounds: int
    rates: list[float]
    agreement: float | None = None  # share of actions equal to banditrec's

    @property
    def best(self) -> float:
        return max(self.rates)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def time_once(
    c: Contender, stream: Stream, n: int, seed: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, NDArray[np.intp]]:
    actions = np.empty(n, dtype=np.intp)
    model = c.new(stream.n_actions, stream.n_features, seed)
    rng = np.random.default_rng(seed)
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        c.run(model, stream, n, rng, actions)
        elapsed = clock() - t0
    finally:
        gc.enable()
    return n / elapsed, actions


def bench_setting(
    K: int,
    d: int,
    rounds: int,
    slow_rounds: int,
    repeats: int,
    contenders: list[Contender],
    seed: int,
    log: Callable[[str], None],
    clock: Callable[[], float] = time.perf_counter,
) -> list[Result]:
    stream = make_stream(max(rounds, slow_rounds), K, d, seed)
    results = {c.key: Result(K, d, c, slow_rounds if c.slow else rounds, []) for c in contenders}
    chooser_seed = seed + 1  # every contender draws the same uniforms
    for c in contenders:  # warm-up: numba (load the cache or compile), numpy, MABWiser imports
        time_once(c, stream, min(200, results[c.key].rounds), chooser_seed, clock)
    served: dict[str, NDArray[np.intp]] = {}
    for rep in range(repeats):
        for c in contenders:
            res = results[c.key]
            rate, actions = time_once(c, stream, res.rounds, chooser_seed, clock)
            res.rates.append(rate)
            served[c.key] = actions
            log(f"  K={K:>2} d={d:>2}  repeat {rep + 1}/{repeats}  {c.label:<32} {rate:>12,.0f}/s")
    first = contenders[0].key  # the reference of the table (banditrec, one way or another)
    if first.startswith("banditrec"):
        ref = served[first]
        for c in contenders:
            if c.epsilon_greedy and c.key != first:
                n = min(len(ref), len(served[c.key]))
                results[c.key].agreement = float(np.mean(ref[:n] == served[c.key][:n]))
    return list(results.values())


# -- report -------------------------------------------------------------------------------


def machine_notes() -> list[str]:
    return _machine.machine_notes(["numpy", "numba", "mabwiser"])


def table_rows(results: list[Result]) -> list[list[str]]:
    rows = []
    for res in results:
        ref = next(r for r in results if r.K == res.K and r.d == res.d)  # banditrec comes first
        is_ref = res is ref
        ratio = "1.0x (ref)" if is_ref else f"{ref.best / res.best:,.1f}x"
        note = "" if res.agreement is None else f"same actions: {res.agreement:.0%}"
        if res.contender.key == "mabwiser":
            note = "own rule: argmax UCB"
        rows.append(
            [
                f"K={res.K}, d={res.d}",
                res.contender.label,
                f"{res.rounds:,}",
                f"{res.best:,.0f}",
                f"{res.median:,.0f}",
                ratio,
                note,
            ]
        )
    return rows


HEADERS = [
    "setting",
    "contender",
    "rounds timed",
    "rounds/s best",
    "rounds/s median",
    "banditrec ÷ it",
    "notes",
]


def print_table(results: list[Result], markdown: bool) -> None:
    rows = table_rows(results)
    if not markdown:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            markdown = True
        else:
            table = Table(title="decide + update rounds per second, in process, one thread")
            for i, h in enumerate(HEADERS):
                table.add_column(h, justify="right" if 2 <= i <= 5 else "left")
            for row in rows:
                table.add_row(*row)
            Console(width=160).print(table)
            return
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "|".join("---:" if 2 <= i <= 5 else "---" for i in range(len(HEADERS))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_speed",
        description="In-process decide+update rounds/s: banditrec LinUCB vs numpy vs MABWiser.",
    )
    parser.add_argument(
        "--rounds", type=int, default=100_000,
        help="rounds for the fast contenders at K=4 (divided by 5 at K=50) [100000]",
    )  # fmt: skip
    parser.add_argument(
        "--slow-rounds", type=int, default=2_000,
        help="rounds for numpy naive and MABWiser at K=4 (divided by 5 at K=50) [2000]",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender [3]")
    parser.add_argument("--quick", action="store_true", help="10x fewer rounds, 2 repeats")
    parser.add_argument("--seed", type=int, default=2024, help="stream seed [2024]")
    parser.add_argument("--no-mabwiser", action="store_true", help="skip MABWiser")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-repeat progress")
    parser.add_argument("--batch-only", action="store_true", help="only the batch table")
    parser.add_argument(
        "--batch-clock", choices=("cpu", "wall"), default="cpu",
        help="the batch table's clock: this process's CPU time (all its threads) or wall [cpu]",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.slow_rounds = args.rounds // 10, args.slow_rounds // 10
        args.repeats = min(args.repeats, 2)
    if args.rounds < 1 or args.slow_rounds < 1 or args.repeats < 1:
        parser.error("--rounds, --slow-rounds and --repeats must be ≥ 1")

    def log(msg: str) -> None:
        if not args.quiet:
            sys.stdout.flush()
            print(msg, file=sys.stderr, flush=True)

    if args.batch_only:
        print("Machine")
        for line in machine_notes():
            print(f"  {line}")
        bench_batches(args, log)
        return 0

    contenders = [c for c in CONTENDERS if c.key != "mabwiser"]
    if not args.no_mabwiser:
        if mabwiser_available():
            contenders = list(CONTENDERS)
        else:
            print("MABWiser is not installed (pip install mabwiser): skipped.", file=sys.stderr)

    print("Machine")
    for line in machine_notes():
        print(f"  {line}")
    print(
        f"Setup: alpha={ALPHA}, ridge={RIDGE}, ε-greedy ε={EPSILON} (MABWiser: its own argmax), "
        f"all actions eligible, seed={args.seed}, best/median of {args.repeats} runs, GC off "
        "while timing."
    )

    print("\nCross-check: one fixed action sequence, max |Δ| of θ and scores vs banditrec")
    ok = True
    for K, d, _ in SETTINGS:
        diffs = cross_check(
            K, d, n=5_000, seed=args.seed, mabwiser=contenders[-1].key == "mabwiser"
        )
        verdicts = []
        for key, diff in diffs.items():
            passed = diff <= CHECK_TOLERANCE
            ok &= passed
            verdicts.append(f"{key} {diff:.1e} {'ok' if passed else 'FAIL'}")
        print(f"  K={K}, d={d}: " + ", ".join(verdicts) + f"  (tolerance {CHECK_TOLERANCE:g})")

    results: list[Result] = []
    t_start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pandas/sklearn chatter inside MABWiser
        for K, d, divisor in SETTINGS:
            results += bench_setting(
                K,
                d,
                rounds=max(1, args.rounds // divisor),
                slow_rounds=max(1, args.slow_rounds // divisor),
                repeats=args.repeats,
                contenders=contenders,
                seed=args.seed,
                log=log,
            )
        # A thousand actions (issue 12): banditrec alone; the HTTP side and the model file
        # are in benchmarks/bench_many_actions.py.
        results += bench_setting(
            1000, 50, rounds=max(1, args.rounds // 50), slow_rounds=1, repeats=args.repeats,
            contenders=[c for c in contenders if c.key == "banditrec"], seed=args.seed, log=log,
        )  # fmt: skip
    print()
    print_table(results, args.markdown)
    print(f"(timing took {time.perf_counter() - t_start:.0f} s)")

    small = [r for r in results if (r.K, r.d) == SETTINGS[0][:2]]
    ours = next(r for r in small if r.contender.key == "banditrec")
    print("\nTargets at K=4, d=20")
    met = ours.best >= TARGET_ROUNDS_PER_S
    print(
        f"  banditrec ≥ {TARGET_ROUNDS_PER_S:,} rounds/s: {'met' if met else 'NOT met'} "
        f"({ours.best:,.0f} best, {ours.median:,.0f} median)"
    )
    mab = next((r for r in small if r.contender.key == "mabwiser"), None)
    if mab is not None:
        ratio = ours.best / mab.best
        print(
            f"  banditrec ≥ {TARGET_RATIO_MABWISER:g}x MABWiser: "
            f"{'met' if ratio >= TARGET_RATIO_MABWISER else 'NOT met'} ({ratio:,.0f}x)"
        )
    bench_batches(args, log)
    if not ok:
        print("\nCROSS-CHECK FAILED: the contenders do not compute the same model.")
        return 1
    return 0


def bench_batches(args: argparse.Namespace, log: Callable[[str], None]) -> None:
    """The batch table: decide + update a batch of contexts at a time, vs numpy's batches."""
    results: list[Result] = []
    t_start = time.perf_counter()
    clock, clock_name = (
        (time.process_time, "this process's CPU time")
        if args.batch_clock == "cpu"
        else (time.perf_counter, "wall time")
    )
    for K, d, divisor in BATCH_SETTINGS:
        rounds = max(BATCH, args.rounds // divisor // BATCH * BATCH)
        results += bench_setting(
            K, d, rounds, rounds, args.repeats, list(BATCH_CONTENDERS), args.seed, log, clock
        )
    print(f"\nBatches of {BATCH:,} contexts: decide (all at once), then learn the batch")
    print(f"(rates per second of {clock_name}; {BATCH_CLOCK_NOTE})")
    print_table(results, args.markdown)
    print(f"(timing took {time.perf_counter() - t_start:.0f} s)")
    print("\nTargets: banditrec's batches ≥ numpy's batches")
    for K, d, _ in BATCH_SETTINGS:
        rows = {r.contender.key: r for r in results if (r.K, r.d) == (K, d)}
        ours, theirs = rows["banditrec_batch"], rows["numpy_batched"]
        met = ours.best >= theirs.best
        print(
            f"  K={K}, d={d}: {'met' if met else 'NOT met'} "
            f"({ours.best:,.0f} vs {theirs.best:,.0f} rounds/s, {ours.best / theirs.best:.2f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
