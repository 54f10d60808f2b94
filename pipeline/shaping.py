"""Shaping a request from its record: a body expression, and ``{path}`` templates.

Some APIs want a body that is not the Kafka value as it is, or a URL or header naming something
inside it. Both read one *context* per record, the same for all three:
``{value, key, headers, topic, partition, offset, timestamp}``, where ``value`` is the value as
the configured :class:`~pipeline.formats.ValueFormat` decoded it.

* The body is a JMESPath expression (``jmespath``: a query language, nothing in it can run code),
  compiled once at start; its result is sent as JSON.
* A URL or header template holds ``{path}`` placeholders, each a JMESPath *path* over the same
  context (``{value.space.id}``, ``{headers."x-tenant"}``, ``{value.items[0]}``): one syntax,
  the body's, restricted to what names one value. ``{{`` and ``}}`` are literal braces.

Kafka keys and header values are bytes; the context holds them as text where they are UTF-8 and
as ``{"base64": "..."}`` where they are not. A reader tells the two apart by type (text is
always a string), which a bare base64 string would not allow.

Whatever a record makes of an expression is that record's fault: an evaluation that fails, a
body that is ``null`` as a whole, a path a record lacks, a value with a line break for a header.
Each is an :class:`~pipeline.errors.InvalidRecordError`, a rejection (halt or dead letter),
never a crash and never a retry.
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions
from jmespath.parser import ParsedResult
from jmespath.visitor import TreeInterpreter

from pipeline.errors import InvalidRecordError
from pipeline.records import KafkaRecord
from pipeline.redaction import secret_name

CONTEXT_NAMES = ("value", "key", "headers", "topic", "partition", "offset", "timestamp")
# What the operator, not the record, chooses: the only names a URL's host may hold.
OPERATOR_NAMES = frozenset({"topic", "partition"})
_PATH_NODES = frozenset({"field", "subexpression", "index_expression", "index"})
_FUNCTIONS: Mapping[str, Any] = Functions.FUNCTION_TABLE
# One interpreter for every evaluation: ``ParsedResult.search`` builds a new one per call, whose
# cache of node handlers starts empty, a fifth of a simple expression's time. It keeps no
# state between calls, and a call never awaits, so sharing it is safe.
_INTERPRETER = TreeInterpreter()


def text_or_base64(data: bytes | None) -> str | dict[str, str] | None:
    """Bytes as UTF-8 text, else as ``{"base64": ...}`` (standard alphabet, padded)."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def context(record: KafkaRecord, value: object) -> dict[str, object]:
    """What an expression or a path reads for ``record`` whose value decoded to ``value``.

    Kafka allows a header name more than once; the context holds its last value, as Kafka
    Connect's ``lastWithName`` does.
    """
    return {
        "value": value,
        "key": text_or_base64(record.key),
        "headers": {name: text_or_base64(data) for name, data in record.headers},
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("children", ()):
        if isinstance(child, Mapping):
            yield from _nodes(child)


def _compiled(source: str) -> ParsedResult:
    """``source`` compiled, or ``ValueError`` in one line; functions are checked here too.

    jmespath looks a function up only when it is called: a misspelt one would reject every
    record instead of failing the start.
    """
    try:
        compiled = jmespath.compile(source)
    except JMESPathError as error:
        raise ValueError(f"not a JMESPath expression: {_one_line(error)}") from None
    for node in _nodes(compiled.parsed):
        if node.get("type") != "function_expression":
            continue
        name, given = node["value"], len(node["children"])
        function = _FUNCTIONS.get(name)
        if function is None:
            raise ValueError(f"unknown function {name}() in the JMESPath expression")
        signature = function["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if given < len(signature) if variadic else given != len(signature):
            raise ValueError(f"{name}() takes {len(signature)} arguments, not {given}")
    return compiled


class BodyExpression:
    """``PIPELINE_SPACE_API_BODY``: a JMESPath expression whose result is the request body.

    Args:
        source: The expression; ``ValueError`` (one line) when it is not one.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._compiled = _compiled(source)

    def __repr__(self) -> str:
        return f"BodyExpression({self.source!r})"

    def body(self, shaped: Mapping[str, object]) -> bytes:
        """The expression's result over ``shaped`` (a :func:`context`) as JSON."""
        try:
            result = _INTERPRETER.visit(self._compiled.parsed, shaped)
        except (JMESPathError, TypeError, ValueError, RecursionError) as error:
            raise InvalidRecordError(f"the body expression failed: {_one_line(error)}") from None
        if result is None:
            raise InvalidRecordError("the body expression yields null for the record")
        try:
            return orjson.dumps(result)
        except orjson.JSONEncodeError as error:
            raise InvalidRecordError(f"the body is not JSON: {error}") from None


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{path}`` of a template; ``root`` is the context name the path starts at."""

    source: str
    root: str
    compiled: ParsedResult

    def text(self, shaped: Mapping[str, object]) -> str:
        """The value the path names, spelt as in JSON; a missing one or a non-scalar refuses."""
        found = _INTERPRETER.visit(self.compiled.parsed, shaped)
        if isinstance(found, str):
            return found
        if isinstance(found, bool):
            return "true" if found else "false"
        if isinstance(found, int | float):
            return orjson.dumps(found).decode()
        what = "nothing" if found is None else f"a {type(found).__name__}"
        raise ValueError(f"{{{self.source}}} names {what} in the record, not a text or number")


def _placeholder(source: str) -> Placeholder:
    if not source:
        raise ValueError("an empty {} placeholder: name a path such as {value.id}")
    compiled = _compiled(source)
    parsed = compiled.parsed
    if any(node.get("type") not in _PATH_NODES for node in _nodes(parsed)):
        raise ValueError(f"{{{source}}} is not a path such as {{value.a.b}}")
    while parsed["type"] != "field":  # the leftmost field is where the path starts
        parsed = parsed["children"][0]
    root = parsed["value"]
    if root not in CONTEXT_NAMES:
        names = ", ".join(f"{{{name}}}" for name in CONTEXT_NAMES)
        raise ValueError(f"unknown placeholder {{{source}}}: a path starts at one of {names}")
    return Placeholder(source, root, compiled)


class Template:
    """A URL or header value holding ``{path}`` placeholders; ``ValueError`` names a wrong one.

    ``parts`` alternates literal text and placeholders, so rendering is one join; ``roots`` are
    the context names the placeholders start at.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        parts: list[str | Placeholder] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as error:
            raise ValueError(f"not a valid template ({error})") from None
        for literal, field, spec, conversion in parsed:
            if literal:
                parts.append(literal)
            if field is None:
                continue
            if spec or conversion:
                spelt = field + (f"!{conversion}" if conversion else "") + f":{spec or ''}"
                raise ValueError(f"{{{spelt.rstrip(':')}}} is not a path such as {{value.a.b}}")
            parts.append(_placeholder(field))
        self.parts: tuple[str | Placeholder, ...] = tuple(parts)
        self.placeholders = tuple(part for part in parts if isinstance(part, Placeholder))
        self.roots = frozenset(placeholder.root for placeholder in self.placeholders)

    def literal(self) -> str:
        """The text with ``{{`` and ``}}`` undone, for a template that holds no placeholder."""
        return "".join(part for part in self.parts if isinstance(part, str))

    def sample(self) -> str:
        """The template with a harmless stand-in for every placeholder, to check the rest."""
        return "".join(part if isinstance(part, str) else "x" for part in self.parts)


def url_template(url: str) -> Template:
    """``PIPELINE_SPACE_API_URL`` as a template; a record may not choose the scheme or host."""
    template = Template(url)
    if template.roots - OPERATOR_NAMES:
        scheme, sep, rest = url.partition("://")
        head = scheme + sep + re.split(r"[/?#]", rest, maxsplit=1)[0]
        if Template(head).roots - OPERATOR_NAMES:
            raise ValueError(
                "a placeholder from the record is in the scheme or host: only {topic} and"
                " {partition} may be, or a record would choose where our credentials go"
            )
    return template


def header_templates(headers: Mapping[str, str]) -> dict[str, Template]:
    """The static headers whose values hold placeholders, as templates, by name.

    ``ValueError`` names the header and the placeholder, never the rest of the value; for a
    header named like a credential (``Authorization``, ``X-Api-Key``) not even the placeholder.
    """
    templates = {}
    for name, value in headers.items():
        if "{" not in value and "}" not in value:
            continue
        try:
            templates[name] = Template(value)
        except ValueError as error:
            if secret_name(name):
                msg = (
                    f"the value of header {name!r} is not a valid template (not shown: a"
                    " credential); a literal brace is written {{ or }}"
                )
                raise ValueError(msg) from None
            raise ValueError(f"the value of header {name!r}: {error}") from None
    return templates
