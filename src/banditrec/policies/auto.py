"""A self-tuning LinUCB: several widths learned side by side, the served one chosen off-policy.

Why: no single confidence width α wins everywhere. On the learning-quality benchmark a narrow
width wins on digits (d = 65), a wide one on iris (d = 5), and on a near-deterministic problem
a fixed 1% exploration floor doubles the loss. `AutoLinUCB` keeps one set of
per-action ridge statistics (A, b, as `LinUCB`) and several *members*, one per width in
`alphas`; a member is LinUCB with that α, so all of them are free to evaluate: the scores
are ``mean + α·w`` with the same mean and the same ``w = √(xᵀA⁻¹x)``.

Choosing the served member
--------------------------
Every learn event (x, a, r) is scored, before it is learned, for every member by the doubly
robust estimate of that member's reward (Dudík, Langford & Li 2011)::

    v_m += Σ_k π_m(k|x)·r̂_k + π_m(a|x) / p(a|x) · (r − r̂_a)

with r̂ the current ridge means and p the probability the action was served with, as the log
holds it (`update_logged`: the engine passes each learn event's logged propensity, `train`
the file's column); without one (`update`, older logs) the served member's probability
recomputed from the state now. The served
member is the one with the highest value, and a new one is served only once its lead over
the current one exceeds `switch_margin` standard errors of their paired difference, so a few
lucky rounds do not make the width flap. The choice is thus a function of the learn stream
alone: replicas applying the same learn events in the same order hold the same state and serve
the same member (DESIGN principle 3 holds for the model; the member choice depends on the
order, as a forgetting factor does).

Until the evidence first decides, a prior rule serves: the widest member whose width on a
typical learned context at the prior, ``α·√(mean xᵀx / λ)``, is at most `prior_width` (one
reward span by default). A first bonus wider than the rewards' span outranks every learned
difference, so in high dimension (digits, d = 65: 2.5 at α = 1) α = 1 keeps exploring long
after it helps, while in low dimension (iris, d = 5: 0.7) it is what finds the classes. This
too is a function of the learn stream (the mean of xᵀx over learned events).

Exploration that shrinks where the model is certain
---------------------------------------------------
The exploration floor of a decision is ``ε·c(x)``, where ``c(x) ∈ (0, 1]`` is how uncertain
the best-known eligible action still is in direction x, relative to the prior:
``c(x) = min_k √(xᵀA_k⁻¹x) / √(xᵀx / λ)`` (1 before any data; it falls like 1/√n as actions
are learned around x). ε is the exploration rule's floor (ε-greedy's ε by default; softmax and
inverse-gap weighting keep their shape and get the shrunk floor mixed in). It never goes
below ``min_epsilon_share·ε``, so the importance weights of off-policy evaluation stay bounded
by ``K / (min_epsilon_share·ε)``.

Honest logging: the selection is deterministic given the past, so the probability served is
the served member's own distribution, exactly; `alpha` is the served member's width (what
``/recommend_action`` reports).

The server's ``alpha`` setting (``BANDITREC_ALPHA``, ``train --alpha``) is `max_alpha`: the
widest member's width, the others keeping their ratio to it (`member_widths`).

Speed: with ε-greedy and γ = 1 (the defaults) a decision is one compiled call
(`_kernels.auto_epsilon_greedy`) and so is a learn event, every member scored
(`_kernels.auto_learn`; a batch: `auto_learn_rows`, row by row in one call); `_credit` and
`_choose` are their Python reference, used for the other rules and γ < 1.

Limits: the members are scored over all actions (the eligibility mask of the decision is not
in the learn event); the logged propensity, when there is one, did see it. Corrections
(summed rewards) move the model exactly, not the member scores (an event is scored on its
first reward).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from banditrec import _kernels
from banditrec.exploration import EpsilonGreedy, Exploration, NoEligibleActionError
from banditrec.policies.base import Array, Batch, Scores, check_positive
from banditrec.policies.ridge import RidgePolicy

__all__ = ["AutoLinUCB"]

#: Widths of the members: greedy, narrow, medium and LinUCB's classic α = 1.
DEFAULT_ALPHAS = (0.3, 1.0)


class AutoLinUCB(RidgePolicy):
    """LinUCB that picks its own width α online, with an exploration floor that shrinks.

    Parameters
    ----------
    alphas
        The members' widths (distinct, ≥ 0, at least one).
    max_alpha
        If set, the widest member's width: `alphas` are scaled to it (≥ 0; 0 leaves only
        greedy). How the server's ``alpha`` setting reaches this policy.
    prior_width
        Until the data choose, the served member is the widest whose width on a typical
        context at the prior, ``α·√(mean xᵀx / λ)``, is at most this (> 0). The default 1
        is the span of rewards in [0, 1]: a wider first bonus outranks any learned difference
        and keeps exploring long after it helps (high-dimensional contexts).
    switch_margin
        A member replaces the served one once its estimated value leads by more than this
        many standard errors of the paired difference (≥ 0).
    min_epsilon_share
        The floor never shrinks below this share of the exploration rule's ε, in (0, 1].
    ridge, gamma, refresh_every
        As `LinUCB` (the shared ridge statistics).
    exploration
        The rule over the served member's scores (default `EpsilonGreedy`, ε = 0.01); its
        floor ε is the largest, served where the model knows nothing, and shrinks elsewhere.

    Examples
    --------
    >>> import numpy as np
    >>> policy = AutoLinUCB().reset(n_actions=2, n_features=2)
    >>> policy.alpha  # before any data: the widest member
    1.0
    >>> _, p = policy.distribution(np.array([1.0, 0.0]), np.ones(2, dtype=bool))
    >>> p.tolist()  # nothing learned: a tie, split evenly
    [0.5, 0.5]
    """

    name: ClassVar[str] = "auto"
    #: The member choice depends on the order of learn events (the model does not).
    order_independent: ClassVar[bool] = False
    state_arrays: ClassVar[tuple[str, ...]] = (  # type: ignore[assignment]
        "A_",
        "b_",
        "value_",
        "value_sq_",
        "evaluated_",
        "context_sq_",
        "served_",
    )
    shared_arrays = ("value_", "value_sq_", "evaluated_", "context_sq_", "served_")
    #: The arrays of the member choice (not the model): scored on each event's first reward.
    selection_arrays: ClassVar[tuple[str, ...]] = shared_arrays
    #: The server's ``alpha`` setting (``BANDITREC_ALPHA``, ``train --alpha``) sets the widest
    #: member's width (`build_policy` reads this).
    setting_names: ClassVar[dict[str, str]] = {"alpha": "max_alpha"}
    #: Logged propensities of the batch being learned (set by `update_batch` for its call).
    _propensities: Array | None = None
    #: The kernels' packed scalars and the exploration rule they were read from.
    _settings_rule: Exploration | None = None
    _settings_array: Array

    @classmethod
    def default_exploration(cls) -> Exploration:
        # The largest floor, served only where the model knows nothing (see the module).
        return EpsilonGreedy(epsilon=0.01)

    def __init__(
        self,
        alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
        max_alpha: float | None = None,
        prior_width: float = 1.0,
        switch_margin: float = 3.0,
        min_epsilon_share: float = 0.1,
        ridge: float = 10.0,
        gamma: float = 1.0,
        refresh_every: int = 1000,
        exploration: Exploration | None = None,
    ) -> None:
        super().__init__(ridge, gamma, refresh_every, exploration)
        self.alphas = [float(a) for a in alphas]
        self.max_alpha = max_alpha
        self.prior_width = prior_width
        self.switch_margin = switch_margin
        self.min_epsilon_share = min_epsilon_share
        if not self.alphas:
            raise ValueError("alphas must hold at least one width.")
        for a in self.alphas:
            check_positive("alphas", a, allow_zero=True)
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas must be distinct, got {self.alphas}.")
        if max_alpha is not None:
            check_positive("max_alpha", max_alpha, allow_zero=True)
        check_positive("prior_width", prior_width)
        check_positive("switch_margin", switch_margin, allow_zero=True)
        if not 0 < min_epsilon_share <= 1:  # also False for NaN
            raise ValueError(f"min_epsilon_share must be in (0, 1], got {min_epsilon_share}.")

    def get_params(self) -> dict[str, Any]:
        return {
            "alphas": list(self.alphas),
            "max_alpha": self.max_alpha,
            "prior_width": self.prior_width,
            "switch_margin": self.switch_margin,
            "min_epsilon_share": self.min_epsilon_share,
            **self._ridge_params(),
        }

    def member_widths(self) -> list[float]:
        """The members' widths: `alphas`, scaled so that the widest is `max_alpha` if set.

        `max_alpha` is how the server's ``alpha`` setting (``BANDITREC_ALPHA``, ``train
        --alpha``) reaches this policy: it caps the exploration as it sets LinUCB's, and the
        narrower members keep their ratio to it (α = 0 leaves greedy alone).

        >>> AutoLinUCB(max_alpha=0.5).member_widths()
        [0.15, 0.5]
        """
        if self.max_alpha is None:
            return list(self.alphas)
        top = max(self.alphas)
        if top == 0.0 or self.max_alpha == 0.0:
            return [0.0]
        return list(dict.fromkeys(a * self.max_alpha / top for a in self.alphas))

    def _init_state(self) -> None:
        super()._init_state()
        self._widths: Array = np.array(self.member_widths())
        m = len(self._widths)
        self.value_: Array = np.zeros(m)  # Σ doubly robust reward estimates per member
        self.value_sq_: Array = np.zeros((m, m))  # Σ of products: the paired differences' s.e.
        self.evaluated_: Array = np.zeros(1)  # Σ weights of the scored learn events
        self.context_sq_: Array = np.zeros(1)  # Σ w·xᵀx: the typical context's size
        # [served member, 1 once the evidence chose it (0: the prior rule still does)]
        self.served_: NDArray[np.int64] = np.array(
            [int(np.argmax(self._widths)), 0], dtype=np.int64
        )

    # -- deciding ----------------------------------------------------------------------

    def _probabilities(
        self, scores: Array, eligible: NDArray[np.bool_], epsilon: float, out: Array
    ) -> None:
        """The exploration rule with its floor ε replaced by the shrunk `epsilon`, into `out`.

        ε-greedy (the default) in one compiled call; softmax and inverse-gap weighting keep
        their own shape and get the shrunk floor mixed in last.
        """
        rule = self.exploration
        if type(rule) is EpsilonGreedy:
            n = _kernels.epsilon_greedy_probabilities(
                scores, eligible, epsilon, rule.tie_tolerance, out
            )
            if not n:
                raise NoEligibleActionError("No eligible action is left to serve.")
            return
        shrunk = dataclasses.replace(rule, epsilon=epsilon)  # type: ignore[type-var]
        out[:] = shrunk.probabilities(scores, eligible)

    @property
    def alpha(self) -> float:
        """The width of the member served now (what ``/recommend_action`` reports)."""
        return float(self._widths[int(self.served_[0])])

    def score(self, x: Array) -> Scores:
        return self._scores(x)[0]

    def _scores(self, x: Array) -> tuple[Scores, Array]:
        """The served member's scores and the unscaled widths √(xᵀA⁻¹x), in one kernel call.

        Bitwise the scores of `LinUCB` with the served α: the kernel's width is α·√q and
        its score mean + width, the same two IEEE operations as here.
        """
        _, mean, raw = self._linear_scores(x, 1.0)
        width = self.alpha * raw
        return Scores(mean + width, mean, width), raw

    def distribution(
        self, x: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        if type(self.exploration) is EpsilonGreedy:  # the default: one compiled call
            out = np.empty((4, self.n_actions_))
            if not _kernels.auto_epsilon_greedy(
                self.A_inv_, self.theta_, x, self.alpha, eligible, self._settings(), out
            ):
                raise NoEligibleActionError("No eligible action is left to serve.")
            return Scores(out[0], out[1], out[2]), out[3]
        scores, raw = self._scores(x)
        probabilities = np.empty(self.n_actions_)
        self._probabilities(scores.score, eligible, self._floor(x, raw, eligible), probabilities)
        return scores, probabilities

    def distribution_batch(
        self, X: Array, eligible: NDArray[np.bool_], rng: np.random.Generator | None = None
    ) -> tuple[Scores, Array]:
        if type(self.exploration) is not EpsilonGreedy:
            return super().distribution_batch(X, eligible, rng)
        # Every row as `distribution` decides it, in one compiled call (`/v1/rank/batch`).
        X = self._batch_input(X, eligible)
        out = np.empty((4, X.shape[0], self.n_actions_))
        row = _kernels.auto_epsilon_greedy_batch(
            self.A_inv_, self.theta_, X, self.alpha, eligible, self._settings(), out
        )
        if row >= 0:
            raise NoEligibleActionError(f"No eligible action is left to serve (row {row}).")
        return Scores(out[0], out[1], out[2]), out[3]

    def _floor(self, x: Array, raw_width: Array, eligible: NDArray[np.bool_]) -> float:
        """ε·c(x): the floor shrinks with the uncertainty left in direction x (module doc).

        `raw_width` is √(xᵀA_k⁻¹x) per action: the least uncertain eligible action decides.
        """
        epsilon: float = getattr(self.exploration, "epsilon", 0.0)
        norm = float(np.dot(x, x))
        if norm <= 0.0 or not eligible.any():
            return epsilon
        certainty = float(np.min(raw_width[eligible])) / math.sqrt(norm / self.ridge)
        return epsilon * min(1.0, max(self.min_epsilon_share, certainty))

    def _member_probabilities(self, x: Array) -> tuple[Array, Array]:
        """Every member's distribution (M, K) over all actions at x, and the ridge means."""
        _, mean, raw = self._linear_scores(x, 1.0)
        everyone = np.ones(self.n_actions_, dtype=bool)
        epsilon = self._floor(x, raw, everyone)  # the same for every member
        out = np.empty((len(self._widths), self.n_actions_))
        for m, alpha in enumerate(self._widths):
            self._probabilities(mean + alpha * raw, everyone, epsilon, out[m])
        return out, mean

    # -- learning ----------------------------------------------------------------------

    def _credit(
        self, x: Array, action: int, reward: float, weight: float, propensity: float = 0.0
    ) -> None:
        """Score the event for every member (doubly robust), then pick the served member.

        The Python twin of the `_kernels.auto_credit` and `auto_choose` kernels: it serves
        the exploration rules the kernel does not (softmax, inverse-gap weighting) and γ < 1.
        """
        pi, mean = self._member_probabilities(x)
        served = int(self.served_[0])
        if not propensity > 0.0:  # unknown: the served member's own probability
            propensity = max(float(pi[served, action]), 1e-12)
        estimate = pi @ mean + pi[:, action] / propensity * (reward - mean[action])
        if self.gamma != 1.0:
            for stat in (self.value_, self.value_sq_, self.evaluated_, self.context_sq_):
                stat *= self.gamma
        self.value_ += weight * estimate
        self.value_sq_ += weight * np.outer(estimate, estimate)
        self.evaluated_ += weight
        self.context_sq_ += weight * float(np.dot(x, x))
        self._choose()

    def _choose(self) -> None:
        """Serve the best member if it leads the served one by `switch_margin` s.e."""
        n = float(self.evaluated_[0])
        if n <= 0.0:
            return
        if not self.served_[1]:  # the prior rule, until the evidence first decides
            self.served_[0] = self._prior_member(float(self.context_sq_[0]) / n)
        if n < 2.0:
            return
        served = int(self.served_[0])
        best = int(np.argmax(self.value_))
        if best == served:
            return
        # Paired difference best − served per event: mean and variance from the sums.
        diff_sum = self.value_[best] - self.value_[served]
        sq = self.value_sq_
        diff_sq = sq[best, best] - 2.0 * sq[best, served] + sq[served, served]
        mean = diff_sum / n
        variance = max(diff_sq / n - mean * mean, 0.0)
        if mean > self.switch_margin * math.sqrt(variance / n):
            self.served_[:] = (best, 1)

    def _prior_member(self, mean_context_sq: float) -> int:
        """The widest member whose prior width on a typical context is ≤ `prior_width`."""
        scale = math.sqrt(mean_context_sq / self.ridge)
        widths = self._widths
        fits = [m for m, a in enumerate(widths) if a * scale <= self.prior_width]
        pool = fits or [int(np.argmin(widths))]
        return max(pool, key=lambda m: widths[m])

    def update(self, x: Array, action: int, reward: float, weight: float = 1.0) -> None:
        self.update_logged(x, action, reward, weight, None)

    def update_logged(
        self, x: Array, action: int, reward: float, weight: float, propensity: float | None
    ) -> None:
        """`update` with the probability the action was served with, as the log holds it.

        The members' doubly robust estimates divide by it: the logged value is the honest
        one (it saw the eligibility mask and whatever served then); None (a log without it)
        falls back to the served member's probability recomputed now.
        """
        self._check_one(x, action, reward, weight)
        logged = _check_propensity(propensity)
        if self._compiled():
            since_refresh = _kernels.auto_learn(
                self.A_, self.A_inv_, self.b_, self.theta_, x, action, reward, weight, logged,
                self._widths, self._settings(), self.value_, self.value_sq_, self.evaluated_,
                self.context_sq_, self.served_, self.n_updates_, self._since_refresh,
            )  # fmt: skip
            if since_refresh < 0:
                raise ValueError("x contains NaN or infinity; nothing was learned.")
            if since_refresh >= self.refresh_every:
                self.refresh([action])
            return
        self._check_x(x)
        self._credit(x, action, reward, weight, logged)
        super().update(x, action, reward, weight)

    def _compiled(self) -> bool:
        """Whether the compiled kernels apply: ε-greedy (the default) and γ = 1."""
        return type(self.exploration) is EpsilonGreedy and self.gamma == 1.0

    def _settings(self) -> Array:
        """The kernels' `settings` array (`_kernels.AUTO_SETTINGS`), built once per rule."""
        rule = self.exploration
        if self._settings_rule is not rule:
            assert isinstance(rule, EpsilonGreedy)
            self._settings_array = np.array(
                [
                    rule.epsilon, self.min_epsilon_share, self.ridge, rule.tie_tolerance,
                    self.prior_width, self.switch_margin,
                ]
            )  # fmt: skip
            self._settings_rule = rule
        return self._settings_array

    def update_batch(
        self,
        X: Array,
        actions: NDArray[np.integer[Any]],
        rewards: Array,
        weights: Array | None = None,
        corrections: NDArray[np.bool_] | None = None,
        propensities: Array | None = None,
    ) -> None:
        """`Policy.update_batch`, with the logged probability of each row's action if known
        (NaN or None: unknown, as `update_logged`'s None)."""
        if propensities is None:
            self._propensities = None
        else:
            logged = np.asarray(propensities, dtype=np.float64)
            if logged.shape != (len(actions),):
                raise ValueError(
                    f"propensities must hold one value per row ({len(actions)}), "
                    f"not shape {logged.shape}."
                )
            for value in logged:
                _check_propensity(None if math.isnan(value) else float(value))
            self._propensities = np.where(np.isnan(logged), 0.0, logged)
        try:
            super().update_batch(X, actions, rewards, weights, corrections)
        finally:
            self._propensities = None

    def correct(self, x: Array, action: int, reward_delta: float) -> None:
        # The model moves exactly; the members were scored on the event's first reward and
        # are left as they are: the weights that scored it belonged to the model of then,
        # which is gone, and re-weighting with today's would not be the same estimate.
        super().correct(x, action, reward_delta)

    def _learn_batch(self, batch: Batch) -> None:
        # Each event is scored on the model as it stood before it: row by row, as online,
        # in one compiled call when the kernels apply.
        logged = getattr(self, "_propensities", None)
        if logged is None:
            logged = np.zeros(len(batch.actions))
        if self._compiled():
            if not _kernels.auto_learn_rows(
                self.A_, self.A_inv_, self.b_, self.theta_, batch.X, batch.actions,
                batch.rewards, batch.weights, batch.observed, logged, self._widths,
                self._settings(), self.value_, self.value_sq_, self.evaluated_,
                self.context_sq_, self.served_, self.n_updates_, self._since_refresh,
                self.refresh_every,
            ):  # fmt: skip
                raise np.linalg.LinAlgError("A is not positive definite.")
        else:
            for i in range(len(batch.actions)):
                x, action, reward = batch.X[i], int(batch.actions[i]), float(batch.rewards[i])
                if batch.observed[i]:
                    p = float(logged[i])
                    self.update_logged(x, action, reward, float(batch.weights[i]), p or None)
                else:
                    self.correct(x, action, reward)
        # As the other ridge policies end a batch: A⁻¹ and θ re-derived exactly, so a model
        # file (whose loading refreshes) serves bit for bit what this policy serves.
        self.refresh()


def _check_propensity(propensity: float | None) -> float:
    """The kernels' form of a logged propensity: itself if in (0, 1], 0.0 for unknown."""
    if propensity is None:
        return 0.0
    if not 0.0 < propensity <= 1.0:  # also False for NaN
        raise ValueError(f"A propensity must be in (0, 1], got {propensity}.")
    return float(propensity)
