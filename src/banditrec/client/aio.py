"""`AsyncClient`: the asyncio client of a banditrec server, the same calls as `Client`.

Examples
--------
>>> import asyncio
>>> from banditrec.client import AsyncClient
>>> async def main() -> str:
...     async with AsyncClient("http://127.0.0.1:8020") as bandit:
...         decision = await bandit.rank(context)
...         await bandit.reward(decision.event_id, 1.0)
...         return decision.action_id
>>> asyncio.run(main())  # doctest: +SKIP
'deep_link_to_store'
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from banditrec.client.sync import client_headers

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """The asyncio twin of `Client`: same parameters, same calls (awaited), same retries.

    Examples
    --------
    >>> client = AsyncClient("http://127.0.0.1:8020", retries=0)
    >>> client.retry_policy.retries
    0
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
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=client_headers(api_key),
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            trust_env=trust_env,
        )

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        if self.loop is not None:  # the same call, on the named loop's route
            call = dataclasses.replace(call, path=loop_path(call.path, self.loop))
        attempts = Attempts()
        policy = self.retry_policy
        while True:
            attempts.count += 1
            try:
                response = await self._http.request(call.method, call.path, **call.request_kwargs())
            except httpx.TransportError as exc:
                await asyncio.sleep(policy.after_transport_error(call, exc, attempts))
                continue
            try:
                return policy.after_response(call, response, attempts)
            except _Retry as retry:
                await asyncio.sleep(retry.delay)

    async def rank(
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
        """As `Client.rank`."""
        return await self._run(
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

    async def rank_batch(
        self,
        contexts: Iterable[Mapping[str, Any]],
        *,
        user_ids: Iterable[str | None] | None = None,
        actions: Iterable[str] | None = None,
        excluded_actions: Iterable[str] = (),
        baseline_actions: Iterable[str | None] | None = None,
    ) -> list[Decision]:
        """As `Client.rank_batch` (retried only when surely unsent)."""
        return await self._run(
            calls.rank_batch(contexts, user_ids, actions, excluded_actions, baseline_actions)
        )

    async def recommend(self, user_id: str, context: Mapping[str, Any]) -> Recommendation:
        """As `Client.recommend` (retried only when surely unsent)."""
        return await self._run(calls.recommend(user_id, context))

    async def reward(self, event_id: str, value: float, slot: int | None = None) -> RewardReceipt:
        """As `Client.reward` (duplicate-aware retries)."""
        return await self._run(calls.reward(event_id, value, self.reward_aggregation, slot))

    async def activate(self, event_id: str) -> Activation:
        """As `Client.activate`."""
        return await self._run(calls.activate(event_id))

    async def health(self) -> Health:
        """As `Client.health`."""
        return await self._run(calls.health())

    async def model(self) -> ModelInfo:
        """As `Client.model`."""
        return await self._run(calls.model())

    async def actions(self) -> list[ActionInfo]:
        """As `Client.actions`."""
        return await self._run(calls.actions())

    async def metrics(self) -> str:
        """As `Client.metrics`."""
        return await self._run(calls.metrics())

    async def add_action(self, action_id: str) -> list[ActionInfo]:
        """As `Client.add_action` (retried only when surely unsent)."""
        return await self._run(calls.add_action(action_id))

    async def disable_action(self, action_id: str) -> list[ActionInfo]:
        """As `Client.disable_action`."""
        return await self._run(calls.toggle_action(action_id, "disable"))

    async def enable_action(self, action_id: str) -> list[ActionInfo]:
        """As `Client.enable_action`."""
        return await self._run(calls.toggle_action(action_id, "enable"))

    async def snapshot(self) -> SnapshotInfo:
        """As `Client.snapshot`."""
        return await self._run(calls.snapshot())

    async def forget_user(self, user_id: str) -> Forgotten:
        """As `Client.forget_user`."""
        return await self._run(calls.forget_user(user_id))

    async def export_model(self) -> bytes:
        """As `Client.export_model`."""
        return await self._run(calls.export_model())

    # -- the lifecycle: decoded JSON, as `Client`'s ---------------------------------------

    async def lifecycle_status(self) -> dict[str, Any]:
        """As `Client.lifecycle_status` (the decoded JSON object)."""
        return await self._run(calls.lifecycle_status())

    async def serve_mode(
        self, mode: Literal["own", "apprentice"], reason: str = "admin"
    ) -> dict[str, Any]:
        """As `Client.serve_mode` (retried only when surely unsent)."""
        return await self._run(calls.serve_mode(mode, reason))

    async def candidates(self) -> list[dict[str, Any]]:
        """As `Client.candidates` (decoded JSON objects)."""
        return await self._run(calls.candidates())

    async def add_candidate(
        self,
        name: str,
        *,
        policy: str | None = None,
        params: Mapping[str, Any] | None = None,
        exploration: str | None = None,
        exploration_params: Mapping[str, float] | None = None,
        model: bytes | None = None,
    ) -> list[dict[str, Any]]:
        """As `Client.add_candidate` (retried only when surely unsent)."""
        return await self._run(
            calls.add_candidate(
                name, policy, params or {}, exploration, exploration_params or {}, model
            )
        )

    async def promote_candidate(
        self, name: str, *, force: bool = False, reason: str = "admin"
    ) -> dict[str, Any]:
        """As `Client.promote_candidate` (retried only when surely unsent)."""
        return await self._run(calls.promote_candidate(name, force, reason))

    async def remove_candidate(self, name: str) -> list[dict[str, Any]]:
        """As `Client.remove_candidate` (retried only when surely unsent)."""
        return await self._run(calls.remove_candidate(name))

    async def models(self) -> list[dict[str, Any]]:
        """As `Client.models` (decoded JSON objects)."""
        return await self._run(calls.models())

    async def upload_model(
        self, model: bytes, label: str, *, activate: bool = False
    ) -> dict[str, Any]:
        """As `Client.upload_model` (retried only when surely unsent)."""
        return await self._run(calls.upload_model(model, label, activate))

    async def activate_model(self, version_id: str) -> dict[str, Any]:
        """As `Client.activate_model` (retried only when surely unsent)."""
        return await self._run(calls.activate_model(version_id))
