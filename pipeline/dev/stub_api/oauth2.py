"""``POST /oauth2/token``: a client-credentials grant (RFC 6749 4.4) and the tokens it issued.

The tokens outlive a stats reset, like a real authorization server's, so a client's cached token
stays good across test scenarios unless :meth:`Tokens.revoke_all` says otherwise.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from urllib.parse import unquote_plus

from aiohttp import BasicAuth, web

from pipeline.dev.stub_api.config import StubConfig


class Tokens:
    """Access tokens issued by ``/oauth2/token``, with their expiry on the monotonic clock."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, lifetime_s: float) -> str:
        """A new token; expired ones are dropped here, so a long run does not pile them up."""
        now = time.monotonic()
        for token in [t for t, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[token]
        token = secrets.token_urlsafe(24)
        self._expiry[token] = now + lifetime_s
        return token

    def valid(self, token: str, now: float) -> bool:
        """Whether the API should take ``token`` at ``now`` (the request's arrival)."""
        expiry = self._expiry.get(token)
        return expiry is not None and now < expiry

    def revoke_all(self) -> None:
        """Forget every token, as a server does whose signing key was rotated."""
        self._expiry.clear()


def grant(
    cfg: StubConfig, tokens: Tokens, headers: Mapping[str, str], form: Mapping[str, object]
) -> web.Response:
    """Answer a client-credentials token request (RFC 6749 4.4), errors as in its 5.2."""
    if not _client_authenticated(cfg, headers, form):
        return web.json_response({"error": "invalid_client"}, status=401)
    grant_type = form.get("grant_type")
    if grant_type != "client_credentials":
        error = "invalid_request" if grant_type is None else "unsupported_grant_type"
        return web.json_response({"error": error}, status=400)
    lifetime = cfg.oauth2_expires_in_s
    body = {
        "access_token": tokens.issue(lifetime),
        "token_type": "Bearer",
        "expires_in": int(lifetime) if lifetime == int(lifetime) else lifetime,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _client_authenticated(
    cfg: StubConfig, headers: Mapping[str, str], form: Mapping[str, object]
) -> bool:
    """Check the client's id and secret, given as HTTP Basic auth or else as form fields."""
    expected = (cfg.oauth2_client_id, cfg.oauth2_client_secret)
    authorization = headers.get("Authorization", "")
    if authorization[:6].lower() != "basic ":
        return expected == (form.get("client_id"), form.get("client_secret"))
    try:
        basic = BasicAuth.decode(authorization)
    except ValueError:
        return False
    given = (basic.login, basic.password)
    # RFC 6749 2.3.1 form-encodes both before Basic; many clients skip that, so take either
    return expected in (given, (unquote_plus(basic.login), unquote_plus(basic.password)))
