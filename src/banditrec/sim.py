"""Simulated environments with a known ground truth, so learning and regret can be measured.

`AppSimulator` is the seed's rewarded mobile app: users with a country, a device, a segment
and usage counts; four actions; a click-or-not reward whose probability depends on the user.
`DriftingAppSimulator` is the same app whose preferences change at a given round (the actions
trade their reward functions), to test forgetting.
The truth is hidden from the policies but not from the tests: `expected_rewards` gives the
exact expected reward of every action for every context, so the oracle's value, a policy's
regret and the true value of any policy for off-policy evaluation are all computable.

Everything is vectorized (categorical fields drawn as codes, not strings: a million
logged rows take ~0.3 s) and every draw comes from the
`numpy.random.Generator` passed in, never from global state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from banditrec.features import Dictionary

__all__ = ["ACTIONS", "CONTEXT_FIELDS", "AppSimulator", "DriftingAppSimulator"]

ACTIONS = ("show_bonus_offer", "invite_friend", "suggest_new_app", "deep_link_to_store")
CONTEXT_FIELDS = (
    "user_id",
    "country",
    "device",
    "segment",
    "n_sessions",
    "days_since_install",
    "recent_engagement",
    "avg_session_length",
)

# "XX" and "tv" are outside the default schema on purpose: real traffic has values the schema
# never heard of, and they must land in the "other" bucket.
_COUNTRIES = ("US", "GB", "DE", "AT", "FR", "BR", "IN", "JP", "XX")
_COUNTRY_P = (0.22, 0.1, 0.12, 0.06, 0.08, 0.12, 0.15, 0.1, 0.05)
_DEVICES = ("ios", "android", "web", "tv")
_DEVICE_P = (0.4, 0.45, 0.12, 0.03)
_SEGMENTS = ("low", "mid", "high")
_SEGMENT_P = (0.5, 0.35, 0.15)

#: Rounds drawn at once by `AppSimulator.logged_batches` (~25 MB of arrays).
BATCH_ROWS = 131_072


@dataclass(frozen=True)
class AppSimulator:
    """The seed's rewarded-app scenario with a context-dependent best action.

    The expected reward of action k is ``sigmoid(base_k + effects_k(context))``: bonus offers
    work on new, low-value users; invites on engaged users on Android; new-app suggestions on
    heavy users with long sessions; store deep links on iOS high-value users in rich markets.
    No single action is best for everyone.

    Parameters
    ----------
    reward_scale
        Multiplies every effect; larger means bigger gaps between actions (easier problem).

    Examples
    --------
    >>> import numpy as np
    >>> sim = AppSimulator()
    >>> contexts = sim.sample_contexts(1000, np.random.default_rng(0))
    >>> mu = sim.expected_rewards(contexts)
    >>> mu.shape, bool(((mu > 0) & (mu < 1)).all())
    ((1000, 4), True)
    >>> len(set(mu.argmax(axis=1).tolist()))  # every action is best for someone
    4
    """

    reward_scale: float = 1.0
    actions: tuple[str, ...] = ACTIONS

    def sample_contexts(self, n: int, rng: np.random.Generator) -> dict[str, NDArray[Any]]:
        """Draw `n` users, column-wise: name -> array of length `n` (the seed's 8 fields)."""
        return {k: _decoded(v) for k, v in self.draw_contexts(n, rng).items()}

    def draw_contexts(self, n: int, rng: np.random.Generator) -> dict[str, Any]:
        """`sample_contexts` as drawn (the same draws): categorical fields as `Dictionary`
        (values and codes), `user_id` as fixed-width bytes, for writing at full speed."""
        segment = _pick(rng, _SEGMENTS, _SEGMENT_P, n)
        level = np.array([0.0, 0.5, 1.0])[segment.codes]  # low, mid, high
        n_sessions = rng.negative_binomial(2, 1 / (1 + 5 * (1 + 2 * level)), size=n)
        recent = rng.poisson(0.6 * n_sessions + 1.0)
        days = rng.geometric(1 / 30, size=n) - 1
        length = np.round(rng.lognormal(np.log(150) + 0.3 * level, 0.5, size=n), 1)
        return {
            "user_id": _user_ids(rng.integers(0, 10**9, size=n)),
            "country": _pick(rng, _COUNTRIES, _COUNTRY_P, n),
            "device": _pick(rng, _DEVICES, _DEVICE_P, n),
            "segment": segment,
            "n_sessions": n_sessions.astype(np.int64),
            "days_since_install": days.astype(np.int64),
            "recent_engagement": recent.astype(np.int64),
            "avg_session_length": np.minimum(length, 86_400.0),
        }

    def expected_rewards(self, contexts: Mapping[str, NDArray[Any]]) -> NDArray[np.float64]:
        """The true expected reward of every action, shape (n, n_actions), in (0, 1)."""
        country, device, segment = (contexts[k] for k in ("country", "device", "segment"))
        sessions = np.log1p(np.asarray(contexts["n_sessions"], dtype=np.float64)) - 2.0
        days = np.log1p(np.asarray(contexts["days_since_install"], dtype=np.float64)) - 2.5
        engagement = np.log1p(np.asarray(contexts["recent_engagement"], dtype=np.float64)) - 2.0
        length = (np.asarray(contexts["avg_session_length"], dtype=np.float64) - 180.0) / 120.0
        length = np.clip(length, -4.0, 4.0)
        high, low = _is(segment, "high"), _is(segment, "low")
        ios, android = _is(device, "ios"), _is(device, "android")
        rich = _is(country, "US", "GB", "DE", "AT", "JP")
        emerging = _is(country, "BR", "IN")

        logits = np.stack(
            [
                -1.3 + 0.9 * low - 0.5 * days - 0.4 * engagement + 0.4 * emerging,
                -1.6 + 0.8 * engagement + 0.6 * android - 0.3 * low,
                -1.5 + 0.6 * sessions + 0.5 * length - 0.4 * ios,
                -1.8 + 1.1 * high + 0.8 * ios + 0.5 * rich - 0.6 * low,
            ],
            axis=1,
        )
        base = logits.mean(axis=1, keepdims=True)
        logits = base + self.reward_scale * (logits - base)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)

    def expected_rewards_at(
        self, contexts: Mapping[str, NDArray[Any]], rounds: NDArray[np.integer[Any]]
    ) -> NDArray[np.float64]:
        """The true expected rewards of contexts seen at the given rounds (0, 1, ...).

        This scenario is stationary: the round does not matter (see `DriftingAppSimulator`).
        """
        return self.expected_rewards(contexts)

    def sample_rewards(
        self, expected: NDArray[np.float64], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Bernoulli rewards with the given expected values (any shape)."""
        return (rng.random(expected.shape) < expected).astype(np.float64)

    def simulate_logged(self, n: int, rng: np.random.Generator) -> dict[str, NDArray[Any]]:
        """Logged data from the uniform random logging policy, in the CSV's column layout.

        Columns: the 8 context fields, `action` (its name), `propensity`, `reward`, and the
        true expected reward of every action as `expected_reward_<action>`. Row i is round i.
        """
        return {k: _decoded(v) for k, v in self.draw_logged(n, rng).items()}

    def draw_logged(self, n: int, rng: np.random.Generator, first_round: int = 0) -> dict[str, Any]:
        """`simulate_logged` as drawn (the same draws, encoded as by `draw_contexts`), for
        rounds ``first_round .. first_round + n - 1``."""
        contexts = self.draw_contexts(n, rng)
        mu = self.expected_rewards_at(contexts, np.arange(first_round, first_round + n))
        n_actions = len(self.actions)
        action = rng.integers(0, n_actions, size=n)
        reward = self.sample_rewards(np.take_along_axis(mu, action[:, None], axis=1)[:, 0], rng)
        logged: dict[str, Any] = dict(contexts)
        logged["action"] = Dictionary(self.actions, action)
        logged["propensity"] = np.full(n, 1.0 / n_actions)
        logged["reward"] = reward
        for k, name in enumerate(self.actions):
            logged[f"expected_reward_{name}"] = mu[:, k]
        return logged

    def logged_batches(
        self, n: int, rng: np.random.Generator, batch_rows: int = BATCH_ROWS
    ) -> Iterator[dict[str, Any]]:
        """`n` logged rounds as batches of `draw_logged` (memory holds one batch).

        The rounds follow from `rng` and `batch_rows`: one batch of `n` rows is
        `simulate_logged(n, rng)`, smaller batches draw the same distribution in another
        order.
        """
        for start in range(0, n, batch_rows):
            yield self.draw_logged(min(batch_rows, n - start), rng, first_round=start)


def _pick(
    rng: np.random.Generator, values: tuple[str, ...], p: tuple[float, ...], n: int
) -> Dictionary:
    """`rng.choice(values, n, p=p)` as codes: the same draws, no strings."""
    return Dictionary(values, rng.choice(len(values), size=n, p=p))


def _is(column: Any, *values: str) -> NDArray[np.float64]:
    """1.0 where a categorical column (strings or a `Dictionary`) holds one of `values`."""
    if isinstance(column, Dictionary):
        hits = np.array([v in values for v in column.values], dtype=np.float64)
        out: NDArray[np.float64] = hits[column.codes]
        return out
    return np.isin(np.asarray(column), values).astype(np.float64)


def _user_ids(numbers: NDArray[np.int64]) -> NDArray[np.bytes_]:
    """The letter u and the 9 digits of each number in [0, 10⁹) (zero-padded: one width for
    all, so that the column is fixed-width bytes, 'S10', that pyarrow takes as is)."""
    digits = np.empty((len(numbers), 10), dtype=np.uint8)
    digits[:, 0] = ord("u")
    rest = numbers.astype(np.int32)  # < 10⁹: int32 division is the fast one
    for j in range(9, 0, -1):
        digits[:, j] = rest % 10 + ord("0")
        rest //= 10
    return digits.view("S10").ravel()


def _decoded(column: Any) -> NDArray[Any]:
    """A column drawn by `draw_logged` as the plain arrays `simulate_logged` returns."""
    if isinstance(column, Dictionary):
        decoded: NDArray[Any] = np.asarray(column.values)[column.codes]
        return decoded
    array: NDArray[Any] = np.asarray(column)
    return array.astype(str) if array.dtype.kind == "S" else array


@dataclass(frozen=True)
class DriftingAppSimulator(AppSimulator):
    """The app scenario whose preferences drift: at round `drift_at` the actions swap.

    From round `drift_at` on, action k earns what action ``permutation[k]`` earned before
    (by default the order reverses: store deep links now work on new low-value users, bonus
    offers on iOS high-value users, ...). Each user still has a clear best action, but
    not the same one: a policy that never forgets keeps serving yesterday's favourites
    until the new evidence outweighs everything it learned before.

    Parameters
    ----------
    drift_at
        The first round with the new preferences.
    permutation
        Action k's reward function after the drift is action ``permutation[k]``'s before.
    reward_scale
        As for `AppSimulator`.

    Examples
    --------
    >>> import numpy as np
    >>> sim = DriftingAppSimulator(drift_at=100)
    >>> contexts = sim.sample_contexts(3, np.random.default_rng(0))
    >>> before = sim.expected_rewards_at(contexts, np.array([0, 0, 0]))
    >>> after = sim.expected_rewards_at(contexts, np.array([100, 100, 100]))
    >>> bool(np.array_equal(after, before[:, ::-1]))
    True
    """

    drift_at: int = 10_000
    permutation: tuple[int, ...] = (3, 2, 1, 0)

    def __post_init__(self) -> None:
        if sorted(self.permutation) != list(range(len(self.actions))):
            raise ValueError(
                f"permutation must order the {len(self.actions)} actions, got {self.permutation}."
            )
        if self.drift_at < 0:
            raise ValueError(f"drift_at must be ≥ 0, got {self.drift_at}.")

    def expected_rewards_at(
        self, contexts: Mapping[str, NDArray[Any]], rounds: NDArray[np.integer[Any]]
    ) -> NDArray[np.float64]:
        """The true expected rewards, shape (n, n_actions), with the swap from `drift_at`."""
        mu = self.expected_rewards(contexts)
        after = np.asarray(rounds) >= self.drift_at
        mu[after] = mu[after][:, list(self.permutation)]
        return mu
