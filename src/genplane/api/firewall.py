"""The edge firewall: every request is held against the published OpenAPI document first.

The document the app serves at ``/openapi.json`` (the committed ``openapi.yaml``) is
compiled once, when the app is created, into :class:`Rules`: a dict of literal paths,
a short list of templated paths compiled to regexes (with the router's own converters,
so ``{model_identifier}`` spans a slash as ``{model_identifier:path}`` does), and per
operation its query, path and header parameters (type, bounds, length, enum) and
whether it takes a JSON body. A request that does not fit is answered here with the
contract's error, before routing, authentication or any database work:

- path or method not in the document: ``bse_route_not_found`` (404);
- undeclared, repeated, missing or malformed parameters, an oversized URL or header
  section, a wrong ``Content-Type``, a body that is not UTF-8, not JSON, nested deeper
  than the limit or of the wrong top-level type, a body on an operation without one:
  ``bse_invalid_input`` (400) naming the field;
- a body over 100 KB, by ``Content-Length`` or while reading a chunked one:
  ``bse_payload_too_large`` (413). At most 100 KB is buffered; the checked body is
  handed on to the app.

Each rejection is logged (``firewall_rejected``: key prefix, IP, method, path, reason)
and counted against its subject (see :mod:`genplane.api.blocklist`): the caller's key
when that key has authenticated before, otherwise the client IP. A subject over the
threshold is blocked for a cool-down: every request from it is answered
``bse_request_blocked`` (403, ``Retry-After``) before anything else. An address block
holds only requests without a working key: a key this process has not seen work yet is
looked up (``verify_key``) and, if it works, judged as itself, so one abuser behind a
NAT cannot lock out every tenant behind it.

Outside the document, the app's own pages (the document, ``/docs``, stored files, the
browser pages of :mod:`genplane.web` and their static files, and the ``/metrics`` scrape
when it is on) are passed through after the blocks, as they are, on GET and HEAD only;
the orchestrator's probes (``/healthz``, ``/readyz``) are passed through before anything,
blocks included: a load balancer probing from an address an abuser shares must still get
the truth, and a probe is never counted as a rejection.

Not checked here, on purpose: the model-specific rules of a generation body (the
generation service owns them) and headers the document does not declare (clients
send many, e.g. ``User-Agent``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from starlette.datastructures import Headers
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genplane.api.blocklist import FirewallStore, ip_subject, key_subject
from genplane.api.client_address import client_ip
from genplane.api.errors import render_error
from genplane.contract.errors import ApiError, invalid_input
from genplane.contract.rate_headers import refusal_headers
from genplane.generations.request import MAX_BODY_BYTES
from genplane.net.bearer import bearer_token
from genplane.settings import Settings
from genplane.usage.recorder import UsageRecorder

log = structlog.get_logger("genplane.firewall")

# Served by the app but not part of the published API: passed through as they are.
WHITELIST_PATHS = frozenset({"/openapi.json", "/docs"})
WHITELIST_PREFIXES = ("/files/",)
WHITELIST_METHODS = frozenset({"GET", "HEAD"})

# An integer of any size the URL can carry: a parameter without bounds (estimate's clamped `count`)
# takes any integer. Capped below the digits Python converts from text by default (4300).
_INT = re.compile(r"[+-]?[0-9]{1,4000}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]{0,18})?|\.[0-9]{1,18})(?:[eE][+-]?[0-9]{1,3})?")
# The spellings FastAPI (pydantic) accepts for a boolean query value.
_BOOLEAN = frozenset({"0", "1", "true", "false", "on", "off", "yes", "no", "t", "f", "y", "n"})
_SHOWN = 64  # longest client-chosen name echoed in an error or a log line
_CONVERTER = re.compile(r"\{([^}:]+):[^}]+\}")


class Rejection(Exception):
    def __init__(self, error: ApiError, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.operation: Operation | None = None  # set once the request matched one


def _invalid(field_name: str, message: str, reason: str) -> Rejection:
    return Rejection(invalid_input(field_name[:_SHOWN], message), reason)


@dataclass(frozen=True, slots=True)
class Param:
    """One declared parameter and the parts of its schema a string value can be checked against."""

    name: str
    location: str
    required: bool
    kind: str  # integer | number | boolean | string | any
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    enum: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None

    def problem(self, value: str) -> str | None:
        """Why ``value`` does not fit the schema, or None when it does."""
        kind = self.kind
        number: float
        if kind == "integer":
            if not _INT.fullmatch(value):
                return "must be an integer"
            number = int(value)
        elif kind == "number":
            if not _NUMBER.fullmatch(value):
                return "must be a number"
            number = float(value)
        elif kind == "boolean":
            return None if value.lower() in _BOOLEAN else "must be true or false"
        else:
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
            if self.min_length is not None and len(value) < self.min_length:
                return f"must be at least {self.min_length} characters"
            if self.enum is not None and value not in self.enum:
                return "must be one of " + ", ".join(sorted(self.enum))
            if self.pattern is not None and not self.pattern.search(value):
                return "does not match the declared pattern"
            return None
        if self.minimum is not None and (
            number < self.minimum or (self.exclusive_minimum and number == self.minimum)
        ):
            return f"must be {'above' if self.exclusive_minimum else 'at least'} {_num(self.minimum)}"
        if self.maximum is not None and (
            number > self.maximum or (self.exclusive_maximum and number == self.maximum)
        ):
            return f"must be {'below' if self.exclusive_maximum else 'at most'} {_num(self.maximum)}"
        if self.enum is not None and value not in self.enum:
            return "must be one of " + ", ".join(sorted(self.enum))
        return None


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True, slots=True)
class BodyRule:
    required: bool
    media_types: frozenset[str]
    json_type: str | None  # the top-level schema type of a JSON body, when declared


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    path_params: tuple[Param, ...]
    query: dict[str, Param]
    required_query: tuple[str, ...]
    headers: dict[bytes, Param]  # by lower-case name
    required_headers: tuple[bytes, ...]
    body: BodyRule | None
    operation_id: str | None = None  # the request metrics' label of a request refused here


@dataclass(frozen=True, slots=True)
class Rules:
    """The compiled document: literal paths by dict, templated paths by (prefix, regex)."""

    literal: dict[str, dict[str, Operation]]
    templated: tuple[tuple[str, re.Pattern[str], dict[str, Operation]], ...]

    def match(self, path: str) -> tuple[dict[str, Operation], dict[str, str]] | None:
        ops = self.literal.get(path)
        if ops is not None:
            return ops, {}
        for prefix, regex, ops in self.templated:
            if path.startswith(prefix):
                found = regex.match(path)
                if found is not None:
                    return ops, found.groupdict()
        return None

    def operations(self) -> Iterable[Operation]:
        for ops in self.literal.values():
            yield from ops.values()
        for _, _, ops in self.templated:
            yield from ops.values()


# -- compiling the document --------------------------------------------------------------------


def _resolve(schema: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """Follow local ``$ref``s (and a single ``allOf``) to the schema that applies."""
    for _ in range(16):
        if not isinstance(schema, dict):
            return {}
        if "$ref" in schema and str(schema["$ref"]).startswith("#/"):
            node: Any = doc
            for part in str(schema["$ref"])[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
            continue
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1:
            schema = {**_resolve(all_of[0], doc), **{k: v for k, v in schema.items() if k != "allOf"}}
            continue
        return schema
    return {}


def _param(raw: dict[str, Any], doc: dict[str, Any]) -> Param:
    schema = _resolve(raw.get("schema", {}), doc)
    kind = schema.get("type")
    enum = schema.get("enum")
    pattern = schema.get("pattern")
    where = str(raw.get("in", "query"))
    return Param(
        name=str(raw["name"]),
        location=where,
        required=bool(raw.get("required", where == "path")),
        kind=kind if kind in ("integer", "number", "boolean", "string") else "any",
        minimum=schema.get("minimum"),
        maximum=schema.get("maximum"),
        exclusive_minimum=schema.get("exclusiveMinimum") is True,
        exclusive_maximum=schema.get("exclusiveMaximum") is True,
        min_length=schema.get("minLength"),
        max_length=schema.get("maxLength"),
        enum=frozenset(str(e).lower() if isinstance(e, bool) else str(e) for e in enum)
        if isinstance(enum, list)
        else None,
        pattern=re.compile(pattern) if isinstance(pattern, str) else None,
    )


def _body(raw: Any, doc: dict[str, Any]) -> BodyRule | None:
    body = _resolve(raw, doc) if raw else None
    if not body:
        return None
    content = body.get("content") or {}
    json_schema = _resolve(content.get("application/json", {}).get("schema", {}), doc)
    json_type = json_schema.get("type")
    return BodyRule(
        required=bool(body.get("required", False)),
        media_types=frozenset(str(m).lower() for m in content),
        json_type=json_type if isinstance(json_type, str) else None,
    )


def compile_rules(doc: dict[str, Any], route_paths: Iterable[str] = ()) -> Rules:
    """Compile an OpenAPI 3.0 document; ``route_paths`` are the router's paths with converters."""
    converters = {_CONVERTER.sub(r"{\1}", p): p for p in route_paths}
    literal: dict[str, dict[str, Operation]] = {}
    templated: list[tuple[str, re.Pattern[str], dict[str, Operation]]] = []
    for path, item in (doc.get("paths") or {}).items():
        shared = [p for p in item.get("parameters", []) if isinstance(p, dict)]
        ops: dict[str, Operation] = {}
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
                continue
            declared: dict[tuple[str, str], Param] = {}
            for raw in [*shared, *op.get("parameters", [])]:
                param = _param(_resolve(raw, doc), doc)
                name = param.name.lower() if param.location == "header" else param.name
                declared[(param.location, name)] = param
            query = {p.name: p for p in declared.values() if p.location == "query"}
            headers = {
                p.name.lower().encode("latin-1"): p for p in declared.values() if p.location == "header"
            }
            ops[method.upper()] = Operation(
                method=method.upper(),
                path=path,
                path_params=tuple(p for p in declared.values() if p.location == "path"),
                query=query,
                required_query=tuple(n for n, p in query.items() if p.required),
                headers=headers,
                required_headers=tuple(n for n, p in headers.items() if p.required),
                body=_body(op.get("requestBody"), doc),
                operation_id=op.get("operationId"),
            )
        if "{" in path:
            regex, _, _ = compile_path(converters.get(path, path))
            templated.append((path.split("{", 1)[0], regex, ops))
        else:
            literal[path] = ops
    # The most specific template first: the longest literal prefix.
    templated.sort(key=lambda t: len(t[0]), reverse=True)
    return Rules(literal, tuple(templated))


# -- checking one request ----------------------------------------------------------------------


def json_too_deep(value: Any, limit: int) -> bool:
    """True when arrays and objects nest more than ``limit`` levels (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _check_query(op: Operation, query_string: bytes) -> None:
    seen: set[str] = set()
    if query_string:
        try:
            pairs = parse_qsl(
                query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"
            )
        except (UnicodeDecodeError, ValueError) as exc:
            raise _invalid("query", "The query string is not valid UTF-8.", "malformed_query") from exc
        for name, value in pairs:
            param = op.query.get(name)
            if param is None:
                raise _invalid(name, f"Unknown query parameter '{name[:_SHOWN]}'.", "undeclared_query")
            if name in seen:
                raise _invalid(name, f"Query parameter '{name}' is repeated.", "repeated_query")
            seen.add(name)
            problem = param.problem(value)
            if problem is not None:
                raise _invalid(name, f"'{name}' {problem}.", "malformed_query")
    for name in op.required_query:
        if name not in seen:
            raise _invalid(name, f"Query parameter '{name}' is required.", "missing_query")


def _check_headers(op: Operation, raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
    seen: set[bytes] = set()
    for name, value in raw_headers:
        param = op.headers.get(name)
        if param is None:
            continue
        if name in seen:
            raise _invalid(param.name, f"Header '{param.name}' is repeated.", "repeated_header")
        seen.add(name)
        problem = param.problem(value.decode("latin-1"))
        if problem is not None:
            raise _invalid(param.name, f"Header '{param.name}' {problem}.", "malformed_header")
    for name in op.required_headers:
        if name not in seen:
            header = op.headers[name].name
            raise _invalid(header, f"Header '{header}' is required.", "missing_header")


def _check_path_params(op: Operation, values: dict[str, str]) -> None:
    for param in op.path_params:
        value = values.get(param.name, "")
        if not value:
            raise _invalid(param.name, f"'{param.name}' is required in the path.", "missing_path_param")
        problem = param.problem(value)
        if problem is not None:
            raise _invalid(param.name, f"'{param.name}' {problem}.", "malformed_path_param")


def _check_content_type(rule: BodyRule, content_type: bytes | None) -> None:
    if content_type is None:
        return  # no header: the body is read as the declared type (plain `curl --data-binary`)
    media, _, params = content_type.decode("latin-1").partition(";")
    if media.strip().lower() not in rule.media_types:
        allowed = ", ".join(sorted(rule.media_types))
        raise _invalid("Content-Type", f"Content-Type must be {allowed}.", "content_type")
    for part in params.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise _invalid("Content-Type", "The body must be UTF-8 encoded.", "content_type")


def _check_json(rule: BodyRule, body: bytes, max_depth: int) -> None:
    if not body.strip():
        if rule.required:
            raise _invalid("body", "A JSON body is required.", "body_missing")
        return
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise _invalid("body", "The body is not valid UTF-8.", "body_not_utf8") from exc
        if "depth" in str(exc).lower() or "recursion" in str(exc).lower():
            raise _invalid("body", f"The body nests more than {max_depth} levels.", "body_too_deep") from exc
        raise _invalid("body", f"The body is not valid JSON: {exc.msg}.", "body_not_json") from exc
    # Cheap bound first: fewer brackets than the limit cannot nest deeper than it.
    if body.count(b"[") + body.count(b"{") > max_depth and json_too_deep(value, max_depth):
        raise _invalid("body", f"The body nests more than {max_depth} levels.", "body_too_deep")
    expected = rule.json_type
    if expected == "object" and not isinstance(value, dict):
        raise _invalid("body", "The body must be a JSON object.", "body_type")
    if expected == "array" and not isinstance(value, list):
        raise _invalid("body", "The body must be a JSON array.", "body_type")


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, at most MAX_BODY_BYTES of it; None when the client went away."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise Rejection(ApiError("bse_payload_too_large"), "body_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _key_prefix(token: str | None) -> str | None:
    """The first 9 characters, and only of a token long enough that they are not the whole of it."""
    if token is None:
        return None
    return token[:9] if len(token) >= 16 else "(short)"


#: (Authorization header, client IP) -> the account of a key that authenticates from there, else None.
KeyVerifier = Callable[[str | None, str], Awaitable[str | None]]


class FirewallMiddleware:
    """Pure ASGI; runs inside EdgeMiddleware (request ids exist) and before the router."""

    def __init__(
        self,
        app: ASGIApp,
        rules: Rules,
        settings: Settings,
        store: FirewallStore,
        usage: UsageRecorder | None = None,
        verify_key: KeyVerifier | None = None,
        served_paths: Iterable[str] = (),
        probe_paths: Iterable[str] = (),
        served_prefixes: Iterable[str] = (),
    ) -> None:
        """``served_paths``: more of the app's own GET paths outside the document (passed after
        the blocks), ``served_prefixes`` the same by prefix (never ``/v1/``); ``probe_paths``:
        GET paths passed before anything (the orchestrator's)."""
        self.app = app
        self.whitelist = WHITELIST_PATHS | frozenset(served_paths) | frozenset(probe_paths)
        self.prefixes = WHITELIST_PREFIXES + tuple(served_prefixes)
        assert not any(p.startswith("/v1") for p in (*self.whitelist, *self.prefixes)), "the API is checked"
        self.probes = frozenset(probe_paths)
        self.verify_key = verify_key
        self.rules = rules
        self.store = store
        self.usage = usage
        self.error_shape = settings.error_shape
        self.max_header_bytes = settings.firewall_max_header_bytes
        self.max_header_line = settings.firewall_max_header_line_bytes
        self.max_url = settings.firewall_max_url_bytes
        self.max_depth = settings.firewall_max_json_depth
        # A block's X-RateLimit-Limit: the rejections per window that start one.
        self.block_limit = settings.firewall_max_rejections

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["path"] in self.probes and scope["method"] == "GET"):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        authorization = content_type = content_length = None
        chunked = False
        total = 0
        oversized: bytes | None = None
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        for name, value in raw_headers:
            size = len(name) + len(value)
            total += size
            if size > self.max_header_line:
                oversized = name
            if name == b"authorization":
                if authorization is None:  # the first, as every other reader takes it
                    authorization = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                chunked = True

        token = bearer_token(authorization.decode("latin-1")) if authorization is not None else None
        key = key_subject(token) if token is not None else None
        ip = client_ip(scope)
        store = self.store
        account = await store.verified_account(key) if key is not None else None
        subject = key if account is not None and key is not None else ip_subject(ip)

        blocked = await store.blocked_for(subject)
        if blocked > 0 and key is not None and account is None and self.verify_key is not None:
            # An address block is for requests without a working key: behind one NAT, one abuser
            # must not lock out every tenant. A key this process has not seen work yet is tried.
            account = await self.verify_key(authorization.decode("latin-1") if authorization else None, ip)
            if account is not None:
                await store.mark_verified(key, account)
                subject = key
                blocked = await store.blocked_for(subject)
        if blocked > 0:
            retry = max(1, math.ceil(blocked))
            err = ApiError(
                "bse_request_blocked",
                details={"retry_after_seconds": retry},
                headers=refusal_headers(self.block_limit, retry),
            )
            await render_error(state, self.error_shape, Headers(scope=scope), err)(scope, receive, send)
            return

        try:
            receive = await self._check(
                scope, receive, raw_headers, total, oversized, content_type, content_length, chunked
            )
        except Rejection as rejection:
            await self._reject(scope, receive, send, state, rejection, subject, token, ip)
            if account is not None and rejection.operation is not None and self.usage is not None:
                # The caller's own usage shows the request, as it did when the handler refused it.
                op = rejection.operation
                err = rejection.error
                self.usage.record(account, f"{op.method} {op.path}", err.status_code, err.name)
            return
        await self.app(scope, receive, send)
        auth = state.get("auth")
        if key is not None and auth is not None:
            await store.mark_verified(key, auth.account_id)

    async def _check(
        self,
        scope: Scope,
        receive: Receive,
        raw_headers: list[tuple[bytes, bytes]],
        header_bytes: int,
        oversized: bytes | None,
        content_type: bytes | None,
        content_length: bytes | None,
        chunked: bool,
    ) -> Receive:
        """Raise :class:`Rejection`, or return the ``receive`` the app is to read the body from."""
        if oversized is not None:
            name = oversized.decode("latin-1")[:_SHOWN]
            raise _invalid(name, f"Header '{name}' is over {self.max_header_line} bytes.", "header_too_large")
        if header_bytes > self.max_header_bytes:
            raise _invalid(
                "headers", f"The headers are over {self.max_header_bytes} bytes.", "headers_too_large"
            )
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        query_string: bytes = scope.get("query_string", b"")
        if len(path) + len(query_string) > self.max_url:
            raise _invalid("url", f"The URL is over {self.max_url} bytes.", "url_too_long")
        declared_length = 0
        if content_length is not None:
            if not content_length.isdigit():
                raise _invalid("Content-Length", "Content-Length must be a number.", "content_length")
            declared_length = int(content_length)
            if declared_length > MAX_BODY_BYTES:
                raise Rejection(ApiError("bse_payload_too_large"), "body_too_large")

        method: str = scope["method"]
        if path in self.whitelist or path.startswith(self.prefixes):
            if method in WHITELIST_METHODS:
                return receive
        found = self.rules.match(path)
        op = found[0].get(method) if found is not None else None
        if found is None or op is None:
            raise Rejection(
                ApiError("bse_route_not_found", f"No endpoint {method} {path[:200]}."),
                "unknown_path" if found is None else "unknown_method",
            )
        try:
            return await self._check_operation(
                op, found[1], receive, raw_headers, query_string, content_type, declared_length, chunked
            )
        except Rejection as rejection:
            rejection.operation = op
            raise

    async def _check_operation(
        self,
        op: Operation,
        path_values: dict[str, str],
        receive: Receive,
        raw_headers: list[tuple[bytes, bytes]],
        query_string: bytes,
        content_type: bytes | None,
        declared_length: int,
        chunked: bool,
    ) -> Receive:
        if op.path_params:
            _check_path_params(op, path_values)
        if query_string or op.required_query:
            _check_query(op, query_string)
        if op.headers:
            _check_headers(op, raw_headers)

        rule = op.body
        method = op.method
        if rule is None:
            if not chunked and declared_length == 0:
                return receive
            body = await _read_body(receive)
            if body:
                raise _invalid("body", f"{method} {op.path} takes no body.", "unexpected_body")
            return _replay(b"", receive) if body is not None else receive
        _check_content_type(rule, content_type)
        body = await _read_body(receive)
        if body is None:
            return receive  # the client is gone; the app notices the disconnect itself
        if "application/json" in rule.media_types:
            _check_json(rule, body, self.max_depth)
        elif rule.required and not body:
            raise _invalid("body", "A body is required.", "body_missing")
        return _replay(body, receive)

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: dict[str, Any],
        rejection: Rejection,
        subject: str,
        token: str | None,
        ip: str,
    ) -> None:
        err = rejection.error
        if rejection.operation is not None:
            state["operation_id"] = rejection.operation.operation_id
        log.warning(
            "firewall_rejected",
            request_id=state.get("request_id"),
            key_prefix=_key_prefix(token),
            ip=ip,
            method=scope["method"],
            path=str(scope["path"])[:256],
            reason=rejection.reason,
            error=err.name,
            field=(err.details or {}).get("field"),
        )
        started = await self.store.record_rejection(subject)
        if started:
            log.warning(
                "firewall_blocked",
                key_prefix=_key_prefix(token),
                ip=ip,
                subject="key" if subject.startswith("key:") else "ip",
                seconds=started,
            )
        await render_error(state, self.error_shape, Headers(scope=scope), err)(scope, receive, send)
