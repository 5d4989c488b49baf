"""`Client`: the blocking client of a banditrec server.

Examples
--------
>>> from banditrec.client import Client
>>> with Client("http://127.0.0.1:8020", api_key="my-writer-key") as bandit:  # doctest: +SKIP
...     decision = bandit.rank({"country": "AT", "device": "ios", "segment": "high",
...                             "n_sessions": 10, "days_since_install": 5,
...                             "recent_engagement": 12, "avg_session_length": 180.0})
...     show(decision.action_id)
...     receipt = bandit.reward(decision.event_id, 1.0)
...     receipt.learned
True
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from banditrec.client._calls import Attempts, Call, RetryPolicy, _Retry, calls
from banditrec.client.models import (
    ActionInfo,
    Activation,
    Decision,
    Forgotten,
    Health,
    ModelInfo,
    Recommendation,
    RewardReceipt,
    SnapshotInfo,
)

__all__ = ["Client", "client_headers"]

T = TypeVar("T")


def client_headers(api_key: str | None) -> dict[str, str]:
    """The headers every request carries: the key, if any, and a user agent."""
    from banditrec import __version__

    headers = {"User-Agent": f"banditrec-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class Client:
    """A typed, retrying client of a banditrec server (blocking; see `AsyncClient`).

    Parameters
    ----------
    url
        The server's (or load balancer's) base URL, e.g. ``http://127.0.0.1:8020``.
    api_key
        Sent as ``Authorization: Bearer <api_key>``; None when the server has no keys.
    timeout
        Seconds to wait for a connection, a write and the reply (or an `httpx.Timeout`).
        A reply that does not come in time counts as lost: safe calls are retried.
    retries
        Further tries after a failure that may be retried (see below); 0 disables them.
    backoff, max_backoff
        The first wait and the longest one between tries, in seconds; waits double, with
        jitter (each is drawn from its upper half).
    reward_aggregation
        The server's ``BANDITREC_REWARD_AGGREGATION``. Under ``"earliest"`` (the server's
        default) a reward repeated after a lost reply is answered ``duplicate`` and
        recognised, so rewards are retried like decisions. Under ``"sum"`` a repeat would be
        added to the total: rewards are then retried only when surely unsent.
    max_connections
        Connections kept open to the server (the pool's size).
    trust_env
        Use proxy settings and certificates from the environment (``HTTP_PROXY`` ...).

    Notes
    -----
    Retried: a connection that could not be made (every call), and, for calls that are safe
    to repeat, a connection that broke after the request was sent, a reply that did not
    come within `timeout`, and the statuses 502, 503 and 504. Never a 4xx or a 500.

    - `rank` makes the event id (a UUID4) before its first try when none is given: a
      repeat is answered with the decision logged the first time, ``replayed=True``. One
      decision is logged, however many tries it took.
    - `reward` is duplicate-aware: when a try's reply was lost and a retry is answered
      ``duplicate`` with the reward's own value as the learned total, the receipt says
      ``status="learned"``, ``learned=True``, ``duplicate=False``, ``recovered=True``
      (see `RewardReceipt`): learned once.
    - `recommend` (the seed's route has no event id) and `add_action` are retried only when
      the request surely did not reach the server.

    Errors raise a `BanditrecError` subclass per status (`NotFound`, `WindowClosed`,
    `ValidationFailed`, ...), with the server's ``code``, ``message`` and ``detail``; no
    answer after the retries raises `ConnectionFailed` (`RequestTimeout` for a timeout).

    Examples
    --------
    >>> client = Client("http://127.0.0.1:8020", retries=5, timeout=2.0)
    >>> client.retry_policy.retries
    5
    >>> client.close()
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        max_backoff: float = 2.0,
        reward_aggregation: Literal["earliest", "sum"] = "earliest",
        max_connections: int = 100,
        trust_env: bool = True,
    ) -> None:
        if reward_aggregation not in ("earliest", "sum"):
            raise ValueError(
                f"reward_aggregation must be 'earliest' or 'sum', got {reward_aggregation!r}."
            )
        self.url = url.rstrip("/")
        self.retry_policy = RetryPolicy(retries, backoff, max_backoff)
        self.reward_aggregation = reward_aggregation
        self._http = httpx.Client(
            base_url=self.url,
            headers=client_headers(api_key),
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            trust_env=trust_env,
        )

    # -- the lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        attempts = Attempts()
        policy = self.retry_policy
        while True:
            attempts.count += 1
            try:
                response = self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as exc:
                time.sleep(policy.after_transport_error(call, exc, attempts))
                continue
            try:
                return policy.after_response(call, response, attempts)
            except _Retry as retry:
                time.sleep(retry.delay)

    # -- decisions and rewards -----------------------------------------------------------

    def rank(
        self,
        context: Mapping[str, Any],
        *,
        actions: Iterable[str] | None = None,
        excluded_actions: Iterable[str] = (),
        event_id: str | None = None,
        defer_activation: bool = False,
        user_id: str | None = None,
        explain: bool = False,
        baseline_action: str | None = None,
    ) -> Decision:
        """Rank the actions for a context and choose one (``POST /v1/rank``), logged.

        Parameters
        ----------
        context
            The user's context under the server's feature schema; keys it does not know
            are ignored.
        actions
            Only these actions may be served (default: every enabled action).
        excluded_actions
            These are not served (probability 0).
        event_id
            The decision's id (1-128 of ``A-Z a-z 0-9 . _ : -``); default: a new UUID,
            made before the first try so that retries cannot log two decisions.
        defer_activation
            Log now, learn only after `activate` (e.g. when the user may never see it).
        user_id
            Whose decision (not a feature): logged with it, so that `forget_user` can
            delete it.
        explain
            Also return, for each action of the ranking, its estimated mean, its
            uncertainty, each feature's contribution and the reason for its probability.
        baseline_action
            In apprentice mode: the action the app's own rule would take (served, except
            for a small exploring share; docs/lifecycle.md).

        Returns
        -------
        Decision
            ``replayed`` is True when the id had been logged before (after a retry: the
            lost first try); ``context_mismatch`` when that was for another context.

        Raises
        ------
        ValidationFailed
            A context the schema refuses (``detail`` names each field), an unknown action
            (``unknown_action``), or every action excluded (``no_eligible_action``).
        Unavailable
            The event log cannot be reached (after the retries): show your default.

        Examples
        --------
        >>> decision = client.rank(context, excluded_actions=["invite_friend"])  # doctest: +SKIP
        >>> decision.action_id, decision.probability  # doctest: +SKIP
        ('deep_link_to_store', 0.9933)
        """
        return self._run(
            calls.rank(
                context,
                actions,
                excluded_actions,
                event_id,
                defer_activation,
                user_id,
                explain,
                baseline_action,
            )
        )

    def recommend(self, user_id: str, context: Mapping[str, Any]) -> Recommendation:
        """The seed's ``POST /recommend_action``: the next best action for a user.

        Not retried once the request may have reached the server (the route has no event
        id, so a repeat would log a second decision); prefer `rank`.

        Examples
        --------
        >>> client.recommend("u123", context).recommended_action  # doctest: +SKIP
        'deep_link_to_store'
        """
        return self._run(calls.recommend(user_id, context))

    def reward(self, event_id: str, value: float) -> RewardReceipt:
        """Report the reward of a decision (``POST /v1/events/{event_id}/reward``).

        Returns
        -------
        RewardReceipt
            ``learned`` (the first reward in the window), ``duplicate`` or ``summed``;
            ``recovered`` when a lost reply's reward was found learned on a retry.

        Raises
        ------
        NotFound
            No decision has this event id (the reward was recorded, not learned).
        WindowClosed
            The reward window had closed (recorded, not learned; retrying does not help).
        EventNotActivated
            A deferred decision not activated yet (recorded, not learned): `activate` it.
        ValidationFailed
            The value is outside the server's reward range, or not a finite number.

        Examples
        --------
        >>> client.reward(decision.event_id, 1.0).status  # doctest: +SKIP
        'learned'
        """
        return self._run(calls.reward(event_id, value, self.reward_aggregation))

    def activate(self, event_id: str) -> Activation:
        """Activate a deferred decision: from now on it is learned from.

        ``activated`` is False when it was active already (a retry is harmless).
        """
        return self._run(calls.activate(event_id))

    # -- reading -------------------------------------------------------------------------

    def health(self) -> Health:
        """``GET /health``: ``ok``, or ``degraded`` with ``faults`` (decisions still served)."""
        return self._run(calls.health())

    def model(self) -> ModelInfo:
        """``GET /v1/model``: the version, updates and log offset of the served model."""
        return self._run(calls.model())

    def actions(self) -> list[ActionInfo]:
        """``GET /v1/actions``: every action, whether it is served, its updates."""
        return self._run(calls.actions())

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus text exposition."""
        return self._run(calls.metrics())

    # -- administration (an admin key) ---------------------------------------------------

    def add_action(self, action_id: str) -> list[ActionInfo]:
        """Add an action while serving; every action afterwards.

        Raises `ActionExists` if it exists. Not retried once the request may have reached
        the server: after a `ConnectionFailed`, `actions` tells whether it was added.
        """
        return self._run(calls.add_action(action_id))

    def disable_action(self, action_id: str) -> list[ActionInfo]:
        """Stop serving an action (it keeps what it learned); `NotFound` if unknown."""
        return self._run(calls.toggle_action(action_id, "disable"))

    def enable_action(self, action_id: str) -> list[ActionInfo]:
        """Serve a disabled action again; `NotFound` if unknown."""
        return self._run(calls.toggle_action(action_id, "enable"))

    def snapshot(self) -> SnapshotInfo:
        """Write a snapshot of the live model now; the file and its log offset."""
        return self._run(calls.snapshot())

    def forget_user(self, user_id: str) -> Forgotten:
        """Delete every decision of a user (and their rewards) from the live log and the
        archive (privacy requests); the model keeps what it learned.

        Retried like other safe calls: after a lost reply, ``repeated`` is True and the
        counts are those of the last try (the lost one may have deleted the rest).
        """
        return self._run(calls.forget_user(user_id))

    def export_model(self) -> bytes:
        """The live model as a model file's bytes (``.npz``; load with
        `banditrec.snapshot.load_model` after writing them to a file)."""
        return self._run(calls.export_model())
