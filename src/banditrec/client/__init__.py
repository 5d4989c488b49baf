"""A typed Python client of the banditrec API, blocking (`Client`) or asyncio (`AsyncClient`).

Typed results (`Decision`, `RewardReceipt`, ...), one exception class per kind of failure
(`NotFound`, `WindowClosed`, `ValidationFailed`, `Unavailable`, ... all `BanditrecError`),
timeouts, and retries with exponential back-off and jitter that never decide or learn twice:
`rank` fixes its event id before the first try and `reward` recognises its own duplicate.
Only ``httpx`` is needed (a runtime dependency of banditrec).

Examples
--------
>>> from banditrec.client import Client, WindowClosed
>>> bandit = Client("http://127.0.0.1:8020", api_key="writer-key", timeout=2.0)
>>> decision = bandit.rank({"country": "AT", "device": "ios"})  # doctest: +SKIP
>>> try:  # doctest: +SKIP
...     bandit.reward(decision.event_id, 1.0)
... except WindowClosed as exc:
...     print(exc.code, exc.message)
>>> bandit.close()
"""

from banditrec.client._calls import RETRY_STATUSES, RetryPolicy
from banditrec.client.aio import AsyncClient
from banditrec.client.errors import (
    ActionExists,
    BadRequest,
    BanditrecError,
    Conflict,
    ConnectionFailed,
    EventNotActivated,
    FieldError,
    Forbidden,
    InvalidResponse,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServerError,
    Unauthorized,
    Unavailable,
    ValidationFailed,
    WindowClosed,
)
from banditrec.client.models import (
    ActionInfo,
    Activation,
    Decision,
    Forgotten,
    Health,
    ModelInfo,
    RankedAction,
    Recommendation,
    RewardReceipt,
    SlotDecision,
    SnapshotInfo,
)
from banditrec.client.sync import Client

__all__ = [
    "RETRY_STATUSES",
    "ActionExists",
    "ActionInfo",
    "Activation",
    "AsyncClient",
    "BadRequest",
    "BanditrecError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Decision",
    "EventNotActivated",
    "FieldError",
    "Forbidden",
    "Forgotten",
    "Health",
    "InvalidResponse",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "RankedAction",
    "Recommendation",
    "RequestTimeout",
    "RetryPolicy",
    "RewardReceipt",
    "ServerError",
    "SlotDecision",
    "SnapshotInfo",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "WindowClosed",
]
