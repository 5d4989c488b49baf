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

import dataclasses
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx

from banditrec.client._calls import Attempts, Call, RetryPolicy, _Retry, calls, loop_path
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
    loop
        A named loop (docs/loops.md): every call goes to its route, ``/v1/loops/<loop>/...``;
        None: the default loop.

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
        loop: str | None = None,
    ) -> None:
        if reward_aggregation not in ("earliest", "sum"):
            raise ValueError(
                f"reward_aggregation must be 'earliest' or 'sum', got {reward_aggregation!r}."
            )
        self.url = url.rstrip("/")
        self.retry_policy = RetryPolicy(retries, backoff, max_backoff)
        self.reward_aggregation = reward_aggregation
        self.loop = loop
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
        if self.loop is not None:  # the same call, on the named loop's route
            call = dataclasses.replace(call, path=loop_path(call.path, self.loop))
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
        slots: int | None = None,
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
        slots
            A slate: this many distinct actions (1-1000), filled top first, each its own
            logged decision with its probability given the slots above it (in
            ``Decision.slots``; slot 0 is ``action_id``). Reward a slot with
            ``reward(event_id, value, slot=i)``.

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
                slots,
            )
        )

    def rank_batch(
        self,
        contexts: Iterable[Mapping[str, Any]],
        *,
        user_ids: Iterable[str | None] | None = None,
        actions: Iterable[str] | None = None,
        excluded_actions: Iterable[str] = (),
        baseline_actions: Iterable[str | None] | None = None,
    ) -> list[Decision]:
        """Decide for many contexts at once (``POST /v1/rank/batch``): one logged decision
        per context, in their order, each with its own event id made by the server.

        Not retried once the request may have reached the server: the route takes no
        client event ids, so a repeat would log the whole batch a second time. After a
        `ConnectionFailed` whose message says the request may have reached the server, the
        batch may or may not have been logged.

        Parameters
        ----------
        contexts
            The users' contexts, 1 to the server's ``max_batch_size``.
        user_ids
            Whose decision each one is (None where there is none), one per context.
        actions, excluded_actions
            As for `rank`, for every context of the batch.
        baseline_actions
            In apprentice mode: the app's rule's action per context (None where none).

        Returns
        -------
        list of Decision
            One per context, in the order of `contexts`.

        Raises
        ------
        ValidationFailed
            One context is invalid (``detail`` names ``contexts.<i>.<field>``), too many
            contexts, or lists of another length than `contexts`: nothing of the batch was
            decided or logged.
        PayloadTooLarge
            The body exceeds the server's ``max_batch_body_bytes``: split the batch.

        Examples
        --------
        >>> decisions = client.rank_batch([context_a, context_b])  # doctest: +SKIP
        >>> [d.action_id for d in decisions]  # doctest: +SKIP
        ['deep_link_to_store', 'show_bonus_offer']
        """
        return self._run(
            calls.rank_batch(contexts, user_ids, actions, excluded_actions, baseline_actions)
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

    def reward(self, event_id: str, value: float, slot: int | None = None) -> RewardReceipt:
        """Report the reward of a decision (``POST /v1/events/{event_id}/reward``).

        Parameters
        ----------
        event_id
            The decision's event id (a slate's: the one of slot 0).
        value
            The reward, within the server's reward range.
        slot
            For a slate (``rank(..., slots=k)``): the slot rewarded, 0 to k - 1 (default:
            slot 0). The receipt's ``event_id`` is then the slot's own, ``<event_id>:<slot>``
            below slot 0.

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
        return self._run(calls.reward(event_id, value, self.reward_aggregation, slot))

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

    # -- the lifecycle (docs/lifecycle.md) ---------------------------------------------------
    #
    # The server declares no response models for these routes: each returns the decoded
    # JSON object (or list of objects) as the server sent it.

    def lifecycle_status(self) -> dict[str, Any]:
        """``GET /v1/lifecycle`` (a reader key): what is served and how well.

        Returns
        -------
        dict
            The decoded JSON object: ``serving`` (``"own"`` or ``"apprentice"``),
            ``live_version``, ``apprentice`` (its estimated lift over the baseline),
            ``candidates`` and ``guardrail`` (estimates with intervals) and ``switches``
            (the timeline).
        """
        return self._run(calls.lifecycle_status())

    def serve_mode(
        self, mode: Literal["own", "apprentice"], reason: str = "admin"
    ) -> dict[str, Any]:
        """Serve banditrec's own choices (``"own"``) or the app's baseline
        (``"apprentice"``) from the next learn event on, on every replica.

        Not retried once the request may have reached the server (each call writes a
        switch); `lifecycle_status` tells whether it did.

        Parameters
        ----------
        mode
            ``"own"`` or ``"apprentice"``.
        reason
            Written on the timeline (up to 500 characters).

        Returns
        -------
        dict
            The decoded switch record (its ``seq`` is the learn event it takes effect at).
        """
        return self._run(calls.serve_mode(mode, reason))

    def candidates(self) -> list[dict[str, Any]]:
        """``GET /v1/admin/candidates``: every shadow candidate with its estimated value
        and lift over the live policy, as decoded JSON objects."""
        return self._run(calls.candidates())

    def add_candidate(
        self,
        name: str,
        *,
        policy: str | None = None,
        params: Mapping[str, Any] | None = None,
        exploration: str | None = None,
        exploration_params: Mapping[str, float] | None = None,
        model: bytes | None = None,
    ) -> list[dict[str, Any]]:
        """Run a candidate in shadow (``POST /v1/admin/candidates``): it learns from the
        live stream from now on and is scored off-policy on every learned round.

        Not retried once the request may have reached the server (a repeat would be
        refused as existing); `candidates` tells whether it was added.

        Parameters
        ----------
        name
            The candidate's name (1-128 of ``A-Z a-z 0-9 . _ : -``).
        policy, params, exploration, exploration_params
            A registered policy (e.g. ``"linucb"``) and its parameters.
        model
            Or a model file's bytes (`export_model`, ``banditrec train``); give exactly
            one of `policy` and `model`.

        Returns
        -------
        list of dict
            Every candidate afterwards, as decoded JSON objects.

        Raises
        ------
        ValidationFailed
            Neither or both of `policy` and `model`, an unknown policy, a bad name.
        Conflict
            A candidate of this name exists.
        """
        return self._run(
            calls.add_candidate(
                name, policy, params or {}, exploration, exploration_params or {}, model
            )
        )

    def promote_candidate(
        self, name: str, *, force: bool = False, reason: str = "admin"
    ) -> dict[str, Any]:
        """Serve a candidate (its current state) from the next learn event on.

        Refused (409, ``not_proven``) unless its lift's lower bound beats the live policy
        by the margin, or `force`. Not retried once the request may have reached the
        server (a repeat would promote twice).

        Returns
        -------
        dict
            The decoded switch record.
        """
        return self._run(calls.promote_candidate(name, force, reason))

    def remove_candidate(self, name: str) -> list[dict[str, Any]]:
        """Stop a shadow candidate; every candidate afterwards, as decoded JSON objects.

        `NotFound` for an unknown one. Not retried once the request may have reached the
        server (a repeat would be a `NotFound`).
        """
        return self._run(calls.remove_candidate(name))

    def models(self) -> list[dict[str, Any]]:
        """``GET /v1/admin/models``: every model version kept (the base, promotions,
        uploads), as decoded JSON objects."""
        return self._run(calls.models())

    def upload_model(self, model: bytes, label: str, *, activate: bool = False) -> dict[str, Any]:
        """Keep a model file as a new version (``POST /v1/admin/models``).

        Not retried once the request may have reached the server (a repeat would keep a
        second version); `models` tells whether it was kept.

        Parameters
        ----------
        model
            A model file's bytes (`export_model`, ``banditrec train``).
        label
            What this model is, for the list of versions (1-200 characters).
        activate
            Serve it from the next learn event on.

        Returns
        -------
        dict
            The decoded JSON object: ``version`` (the version kept) and ``switch`` (the
            switch record with `activate`, else None).
        """
        return self._run(calls.upload_model(model, label, activate))

    def activate_model(self, version_id: str) -> dict[str, Any]:
        """Roll back (or forward) to a kept version from the next learn event on, on every
        replica; the decoded switch record. `NotFound` for an unknown version.

        Not retried once the request may have reached the server (each call writes a
        switch).
        """
        return self._run(calls.activate_model(version_id))
