"""OAuth2 client credentials: a bearer token for the Space API, fetched and kept fresh.

One fetch at a time (however many lanes need a token at once), refreshed before it expires
(``expires_in``) but never more often than every half-lifetime (or second), and fetched anew when
the API refuses it (the sink then replays the request once). A token endpoint that fails is an
auth outage of the whole API, handled by the gate like a 401: never a bad record. Its answer is
read up to ``MAX_TOKEN_ANSWER_BYTES``: a token endpoint must not fill the stage's memory.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

import orjson
import structlog

from pipeline import metrics
from pipeline.clock import Clock, SystemClock
from pipeline.errors import AuthError, ConfigOutageError, SendError
from pipeline.http_client import HttpClient

log = structlog.get_logger("pipeline.oauth2")

# Refresh this share of a token's life before it ends (and at least a few seconds before), but
# never before half of it has passed: a short lifetime must not turn into a fetch per request.
REFRESH_SHARE = 0.1
MIN_REFRESH_S = 5.0
# A token answer is a few hundred bytes: a bigger one is a wrong endpoint, read no further.
MAX_TOKEN_ANSWER_BYTES = 64 * 1024
# The lifetime of a token whose answer gives none.
DEFAULT_LIFETIME_S = 3600.0
# A lifetime below this (zero, negative, a few ms) counts as this: a token endpoint that says its
# tokens expire at once is still asked once a second at most.
MIN_LIFETIME_S = 2.0


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """Where and how to ask for a token.

    Args:
        token_url: The token endpoint.
        client_id: The client's id.
        client_secret: The client's secret; never logged.
        scope: Space-separated scopes, if the API wants any.
        extra_params: More form fields, e.g. an ``audience``.
    """

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    extra_params: Mapping[str, str] = field(default_factory=dict)


class TokenSource:
    """Tokens for the HTTP sink (:class:`~pipeline.http_sink.BearerTokens`).

    Args:
        credentials: What to ask the token endpoint with.
        client: The HTTP client to ask through (the sink's own).
        clock: Time source, for tests.
    """

    def __init__(
        self, credentials: ClientCredentials, client: HttpClient, *, clock: Clock | None = None
    ) -> None:
        self._credentials = credentials
        self._client = client
        self._clock = clock or SystemClock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A token valid now: the one held, or a fresh one (fetched by one caller at a time)."""
        if self._token is not None and self._clock.monotonic() < self._refresh_at:
            return self._token
        async with self._lock:  # the others wait for this fetch rather than start their own
            if self._token is not None and self._clock.monotonic() < self._refresh_at:
                return self._token
            return await self._fetch()

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: the next caller fetches a new one."""
        if token == self._token:
            self._refresh_at = 0.0

    async def _fetch(self) -> str:
        c = self._credentials
        form = {
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            **({"scope": c.scope} if c.scope else {}),
            **c.extra_params,
        }
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        try:
            answer = await self._client.request(
                "POST",
                c.token_url,
                headers,
                urlencode(form).encode(),
                read_body=True,
                max_body=MAX_TOKEN_ANSWER_BYTES,
            )
        except ConfigOutageError as error:  # an untrusted certificate: the URL, not the secret
            metrics.TOKEN_REQUESTS.labels("failed").inc()
            detail = getattr(error.__cause__, "verify_message", None) or error.reason
            why = (
                f"the token endpoint's TLS certificate failed verification ({detail}); fix"
                " PIPELINE_OAUTH2_TOKEN_URL, or trust its CA with PIPELINE_SPACE_API_CA_FILE"
            )
            raise ConfigOutageError(why, reason=error.reason) from error
        except SendError as error:
            raise self._failed(f"the token endpoint failed: {error}") from error
        if 300 <= answer.status < 400:  # never followed: the setting must name the endpoint
            metrics.TOKEN_REQUESTS.labels("failed").inc()
            why = (
                f"the token endpoint redirects with {answer.status} to {answer.location}; fix"
                " PIPELINE_OAUTH2_TOKEN_URL"
            )
            raise ConfigOutageError(
                why,
                reason="redirect",
                status=answer.status,
                location=answer.location,
            )
        if not 200 <= answer.status < 300:
            excerpt = answer.body[:200].decode("utf-8", "replace")
            raise self._failed(f"the token endpoint answered {answer.status}: {excerpt}")
        try:
            payload = orjson.loads(answer.body)
            token = str(payload["access_token"])
            expires_in = payload.get("expires_in")
            lifetime = DEFAULT_LIFETIME_S if expires_in is None else float(expires_in)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise self._failed("the token endpoint gave no access_token") from None
        refresh_in = refresh_delay(lifetime)
        self._token = token
        self._refresh_at = self._clock.monotonic() + refresh_in
        metrics.TOKEN_REQUESTS.labels("ok").inc()
        log.info("oauth2.token_fetched", expires_in_s=lifetime, refresh_in_s=round(refresh_in, 1))
        return token

    def _failed(self, why: str) -> AuthError:
        metrics.TOKEN_REQUESTS.labels("failed").inc()
        return AuthError(why, reason="auth")


def refresh_delay(lifetime: float) -> float:
    """Seconds to keep a token said to live ``lifetime`` seconds before fetching the next.

    Late in its life, so tokens are not fetched needlessly, but no later than half-way: however
    short (or absurd) the lifetime an endpoint claims, it is asked once per half-lifetime at most.
    """
    if not math.isfinite(lifetime):
        lifetime = DEFAULT_LIFETIME_S  # "never expires", or unreadable: ask now and then anyway
    lifetime = max(lifetime, MIN_LIFETIME_S)
    margin = min(max(MIN_REFRESH_S, REFRESH_SHARE * lifetime), lifetime / 2)
    return lifetime - margin
