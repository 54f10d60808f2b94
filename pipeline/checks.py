"""Checks the settings run when they load, kept free of third-party imports.

Reading the configuration (``space-pipeline config``, a bad variable's exit 2) must not load the
HTTP and Kafka clients the settings configure: the checks the sinks share with the settings live
here, and the sinks import them from here.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

PLACEHOLDERS = ("topic", "partition", "key")
# Headers that frame a message or belong to one connection (RFC 9110 7.6.1, RFC 9112): the client
# writes them. One more from a record or a setting gives a request two ``Host`` or two
# ``Content-Length`` headers, the shape of request smuggling through a proxy. ``Proxy-*`` too.
FRAMING_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
     "upgrade"}
)  # fmt: skip
# Headers the sink writes itself: a copy from elsewhere would contradict them.
OWN_HEADERS = frozenset(
    {"idempotency-key", "x-kafka-topic", "x-kafka-partition", "x-kafka-offset",
     "x-kafka-last-offset", "x-batch-size", "content-type", "content-encoding"}
)  # fmt: skip
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_url_template(url: str) -> str:
    """``url`` with sample values in its placeholders; ``ValueError`` names a wrong one."""
    try:
        return url.format_map({"topic": "t", "partition": "0", "key": "k"})
    except KeyError as error:
        msg = f"unknown placeholder {{{error.args[0]}}}: use {{topic}}, {{partition}} or {{key}}"
        raise ValueError(msg) from None
    except (ValueError, IndexError) as error:
        msg = f"not a valid URL template ({error})"
        raise ValueError(msg) from None


def check_scheme(url: str) -> None:
    """``ValueError`` saying what to add when ``url`` has no scheme (``host:port/path``).

    pydantic calls ``127.0.0.1:8080/items`` "a relative URL without a base", and reads
    ``localhost:8080`` as the scheme ``localhost``: a person means an address, and needs to hear
    the one thing missing.
    """
    if "://" not in url:
        msg = "no scheme: add http:// or https://"
        raise ValueError(msg)


def check_forward_headers(names: Iterable[str]) -> None:
    """``ValueError`` naming a header no record may send.

    Framing and hop-by-hop headers, credentials (a record must not choose who we are) and the
    headers the sink writes itself.
    """
    for name in names:
        lower = name.lower()
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if lower in FRAMING_HEADERS or lower.startswith("proxy-"):
            raise ValueError(f"cannot forward {name!r}: it frames the request or its connection")
        if lower == "authorization":
            raise ValueError("cannot forward 'authorization': a record must not set credentials")
        if lower in OWN_HEADERS - {"content-type"}:  # a record's content-type is used anyway
            raise ValueError(f"cannot forward {name!r}: the sink sets it itself")


def check_static_headers(names: Iterable[str]) -> None:
    """``ValueError`` naming a static header that frames the request or that the sink sets.

    ``Authorization`` is allowed (an API key scheme of the API's own), unless a token is used.
    """
    for name in names:
        lower = name.lower()
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"{name!r} is not a header name")
        if lower in FRAMING_HEADERS or lower.startswith("proxy-"):
            raise ValueError(f"{name!r} frames the request or its connection: the client sets it")
        if lower in OWN_HEADERS:
            raise ValueError(f"{name!r} is set by the sink itself")


def import_object(path: str) -> Any:  # noqa: ANN401 - whatever the user names
    """``package.module:attribute`` (or ``package.module.attribute``) as an object.

    The working directory is importable, as for ``python -m``: a module next to where the stage
    runs is found without installing it. ``ImportError`` or ``AttributeError`` says what failed.
    """
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    if not module_name:
        module_name = "builtins"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def import_function(path: str) -> Callable[..., Any]:
    """The callable at ``path``; ``TypeError`` when it is not one."""
    function = import_object(path)
    if not callable(function):
        msg = f"{path} is a {type(function).__name__}, not a function"
        raise TypeError(msg)
    return function  # type: ignore[no-any-return]


def import_exceptions(paths: Sequence[str]) -> tuple[type[BaseException], ...]:
    """The exception classes at ``paths``; ``TypeError`` for anything else."""
    found = []
    for path in paths:
        kind = import_object(path)
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            msg = f"{path} is not an exception class"
            raise TypeError(msg)
        found.append(kind)
    return tuple(found)
