"""Secrets stay inside the stage: one way to mask them, used for settings, errors, bodies and logs.

Two kinds of secret are masked. Those the stage *knows* (a token, a password, an API key in a
static header, the current OAuth2 token) are replaced wherever they appear: an API that echoes
our ``Authorization`` header in an error body must not put it in a dead letter or a log line.
Those that *look* secret are masked by shape: the password of a URL and the value of a query
parameter named like a credential (:func:`secret_name`), in any URL of any text.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "********"

# Query parameters and header names holding credentials, compared without case, '-', '_' or
# '.': API keys and tokens (``api_key``, ``access_token``, ``X-Api-Key``), signed URLs
# (``sig``, ``X-Amz-Signature``, ``X-Amz-Credential``), passwords and client secrets. A bare
# ``key``, ``auth`` or ``pass`` counts too (``?key=`` is how many APIs take their key); words
# that merely contain them (``monkey``, ``author``, ``passenger``) do not.
_SECRET_NAMES = frozenset({"key", "sig", "auth", "pass", "pwd", "jwt", "cookie", "session"})
_SECRET_PARTS = (
    "token", "secret", "password", "passwd", "apikey", "signature", "credential", "authorization",
    "sessionid", "privatekey", "accesskey",
)  # fmt: skip
_NOT_IN_NAMES = str.maketrans("", "", "-_. ")

# ``scheme://user:password@``: the password runs to the last '@' of the authority.
_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)[^/\s?#]*@", re.IGNORECASE)
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&;#\s]+)=)(?P<value>[^&;#\s]*)")
# A truncated excerpt may end inside a secret: its first few characters are masked too.
_SHORTEST_PREFIX = 4


def secret_name(name: str) -> bool:
    """Whether a query parameter or header of this name holds a credential."""
    folded = name.lower().translate(_NOT_IN_NAMES)
    return folded in _SECRET_NAMES or any(part in folded for part in _SECRET_PARTS)


def mask_url(text: str) -> str:
    """``text`` (a URL, or anything holding URLs) with passwords and secret query values masked.

    Works on text that is no valid URL too: an invalid URL is exactly what an error echoes.
    """
    if "://" in text:
        text = _USERINFO.sub(rf"\g<head>{MASK}@", text)
    if "=" in text:
        text = _QUERY_PARAM.sub(_mask_param, text)
    return text


def _mask_param(match: re.Match[str]) -> str:
    if match["value"] and secret_name(unquote(match["name"])):
        return match["head"] + MASK
    return match[0]


def url_secrets(url: str) -> list[str]:
    """The secrets a URL carries: its password (also as Basic credentials) and secret values."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:  # not a URL anyone could send to
        return []
    found = []
    if password:
        found += [password, unquote(password)]
        basic = f"{unquote(username or '')}:{unquote(password)}".encode()
        found.append(base64.b64encode(basic).decode("ascii"))
    for name, value in parse_qsl(parts.query, keep_blank_values=False):
        if secret_name(name):
            found.append(value)
    return found


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The values of headers named like credentials, and their credential alone.

    ``Authorization: Bearer abc`` yields ``Bearer abc`` and ``abc``: an API may echo either.
    """
    found = []
    for name, value in headers.items():
        if secret_name(name):
            found.append(value)
            _, _, credential = value.partition(" ")
            if credential.strip():
                found.append(credential.strip())
    return found


@dataclass(frozen=True, slots=True)
class Redactor:
    """Masks known secrets, and URL passwords and secret query values, in any text.

    Args:
        secrets: The values to mask wherever they appear; empty ones are ignored.
    """

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, secrets: Iterable[str | None]) -> Redactor:
        """A redactor for these secrets (``None`` and empty ones dropped, longest first)."""
        kept = {secret for secret in secrets if secret}
        return cls(tuple(sorted(kept, key=len, reverse=True)))

    def __call__(self, text: str, *, more: Iterable[str | None] = (), cut: bool = False) -> str:
        """``text`` with every secret (and ``more``) masked.

        Args:
            text: Anything that may hold a secret: a body excerpt, an error, a log value.
            more: Secrets known only now (the OAuth2 token of the request).
            cut: ``text`` is an excerpt cut short: a secret's beginning at its end is masked.
        """
        secrets = [*self.secrets, *(secret for secret in more if secret)]
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if cut:
            text = _mask_cut_secret(text, secrets)
        return mask_url(text)


def _mask_cut_secret(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        for size in range(min(len(secret) - 1, len(text)), _SHORTEST_PREFIX - 1, -1):
            if text.endswith(secret[:size]):
                return text[:-size] + MASK
    return text
