"""A client of the distribution API (OCI distribution spec) for one registry.

One :class:`Registry` holds one ``requests`` session to one registry host and speaks for every
repository there. It does the parts every request shares:

- **Scheme**: https with the system CAs; with ``tls_verify=False`` https without verification,
  falling back to plain http when the registry does not speak TLS (a local test registry).
- **Auth**: anonymous first; a 401 names the scheme in ``WWW-Authenticate``. ``Basic``: the
  credentials given (``USER:PASS``) or found in the docker config (``auths`` of
  ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``). ``Bearer``: a token from the
  challenge's realm for every scope asked so far (``repository:R:pull,push``, and
  ``repository:FROM:pull`` for a cross-repository mount), fetched again when a request needs a
  scope the token lacks or the registry answers 401 ``insufficient_scope``. Of several
  challenges, ``Bearer`` is answered before ``Basic``. Credentials go only to the registry's
  own scheme, host and port: not to another host a redirect or an upload's ``Location`` names.
- **Retries**: connection errors and 5xx answers are retried with exponential backoff (requests
  whose body cannot be sent twice are retried whole by their caller through :func:`retrying`).
  A TLS failure the server would give again (an untrusted certificate, a port that speaks plain
  HTTP) is not retried: it fails at once with OpenSSL's reason and the ``--tls-verify`` hint;
  nor is a host name with no address, or an address that is not a valid URL.
- **Errors**: every failure becomes a :class:`~layerdiff.errors.RegistryError` whose message
  names the registry, the request and what it answered (the distribution error code and text).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
import requests.adapters
import urllib3

from layerdiff.errors import (
    InvalidArgumentError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
)
from layerdiff.image import DOCKER_MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPE

__all__ = [
    "MANIFEST_ACCEPT",
    "Registry",
    "api_host",
    "docker_config_credentials",
    "parse_credentials",
    "pull_scope",
    "push_scope",
    "retrying",
    "with_query",
]

#: Every manifest type we read, for the ``Accept`` header of a manifest GET (distribution 2.8
#: answers 404 to a GET of an OCI manifest that does not accept its type).
MANIFEST_ACCEPT = ", ".join(
    [MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE, *sorted(INDEX_MEDIA_TYPES)]
)

#: Attempts of a request (or of a whole blob transfer) before its failure is reported.
ATTEMPTS = 4
#: First backoff between attempts, doubled after each.
BACKOFF = 0.5
_TIMEOUT = (10.0, 300.0)  # (connect, read) seconds
_RETRY_STATUS = frozenset({500, 502, 503, 504})
_T = TypeVar("_T")
_nesting = threading.local()  # depth of retrying() calls on this thread


def pull_scope(repository: str) -> str:
    """The token scope that reads ``repository``."""
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    """The token scope that reads and writes ``repository``."""
    return f"repository:{repository}:pull,push"


def parse_credentials(text: str) -> tuple[str, str]:
    """``USER:PASS`` → (user, password); the password may contain ``:``."""
    user, colon, password = text.partition(":")
    if not colon or not user:
        raise InvalidArgumentError("credentials must be given as USER:PASSWORD")
    return user, password


#: Docker Hub's names: ``docker login`` keeps its credentials under
#: ``https://index.docker.io/v1/``, references name it ``docker.io``.
_DOCKER_HUB_NAMES = {
    "index.docker.io": "docker.io",
    "registry-1.docker.io": "docker.io",
    "docker.io": "docker.io",
}
#: Where Docker Hub's registry API answers (``docker.io`` itself serves web pages).
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"


def api_host(host: str) -> str:
    """Where the registry ``host`` (as references name it) answers its API: Docker Hub's at
    ``registry-1.docker.io``, as docker and containerd reach it; any other at itself."""
    return _DOCKER_HUB_ENDPOINT if host == "docker.io" else host


def docker_config_credentials(host: str) -> tuple[str, str] | None:
    """The ``auths`` entry for ``host`` in the docker config file, if any.

    The file is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``; keys may be a
    bare host or a URL (``https://host/v1/``). Credential helpers are not run.
    """
    directory = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        config = json.loads((Path(directory) / "config.json").read_bytes())
    except (OSError, ValueError):
        return None
    auths = config.get("auths") if isinstance(config, dict) else None
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        name = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if _DOCKER_HUB_NAMES.get(name, name) != _DOCKER_HUB_NAMES.get(host, host):
            continue
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str):
            try:
                return parse_credentials(base64.b64decode(entry["auth"]).decode())
            except (ValueError, UnicodeDecodeError):
                continue
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return entry["username"], entry["password"]
    return None


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query, keeping what the query already holds (a
    registry's upload ``Location`` carries its state there)."""
    extra = urllib.parse.urlencode(params)
    return f"{url}{'&' if '?' in url else '?'}{extra}"


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
#: The scheme that opens a challenge: a whole token not followed by ``=`` (which would make it
#: a parameter of the challenge before).
_SCHEME_RE = re.compile(rf"[\s,]*({_TOKEN})(?=[\s,]|$)(?!\s*=)")
#: One ``name=value`` parameter of a challenge, the value a token or a quoted string, and the
#: comma after it.
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def _parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Every challenge of a ``WWW-Authenticate`` value, in order: ``Bearer realm="…",
    service="…", Basic realm="…"`` → [("bearer", {realm, service}), ("basic", {realm})]. A
    registry may send several, in one header or in several (which are read joined by commas)."""
    challenges: list[tuple[str, dict[str, str]]] = []
    pos = 0
    while scheme := _SCHEME_RE.match(header, pos):
        pos = scheme.end()
        params: dict[str, str] = {}
        while param := _PARAM_RE.match(header, pos):
            quoted = param.group(2)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else param.group(3)
            params.setdefault(param.group(1).lower(), value)
            pos = param.end()
        challenges.append((scheme.group(1).lower(), params))
        if _SCHEME_RE.match(header, pos) is None and header[pos:].strip(" ,"):
            pos = header.find(",", pos) + 1  # a token68 (``Negotiate abc==``): skipped
            if pos == 0:
                break
    return challenges


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """The challenge of a ``WWW-Authenticate`` value that is answered: ``Bearer`` when there is
    one, else ``Basic``, else the first (which names a scheme not supported); ("", {}) for
    none. Each challenge keeps its own parameters: a ``Basic`` realm is not a token server."""
    challenges = _parse_challenges(header)
    for wanted in ("bearer", "basic"):
        for challenge in challenges:
            if challenge[0] == wanted:
                return challenge
    return challenges[0] if challenges else ("", {})


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port the scheme's default when none is given:
    credentials are sent only where all three are the registry's."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # not a port: the whole of it stands for the host
        return scheme, parts.netloc.lower(), None
    return scheme, (parts.hostname or "").lower(), port


def _reason(exc: BaseException) -> str:
    """The short cause of a connection failure ("[Errno 111] Connection refused")."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\] [^'\")]+", text)
    if found:
        return str(found[-1]).strip()
    for known in ("Read timed out", "Connection aborted", "RemoteDisconnected", "SSL"):
        if known in text:
            return known.lower()
    return type(exc).__name__


#: OpenSSL's codes for a TLS failure that the same server gives again on every try: a
#: certificate that is not trusted (or names another host), or a server that does not speak
#: TLS on that port at all (a plain-HTTP registry answers a ClientHello with text).
_TLS_FOR_GOOD = frozenset(
    {
        "CERTIFICATE_VERIFY_FAILED",
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "PACKET_LENGTH_TOO_LONG",
        "UNSUPPORTED_PROTOCOL",
        "TLSV1_ALERT_PROTOCOL_VERSION",
    }
)


class _ForGood(RegistryUnreachableError):
    """A failure to reach the registry that retrying cannot mend: raised at once."""


class _TLSRefused(_ForGood):
    """A TLS failure that retrying cannot mend (see :data:`_TLS_FOR_GOOD`): raised at once."""


#: getaddrinfo's answers that a host name has no address (``EAI_NONAME``, ``EAI_NODATA``,
#: ``EAI_FAIL``): asking again gives the same. ``EAI_AGAIN``, a resolver that did not answer,
#: is retried as a connection failure is.
_NO_ADDRESS = frozenset(
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_NODATA", "EAI_FAIL")
    if hasattr(socket, name)
)


def _unresolved(exc: BaseException) -> bool:
    """Whether ``exc`` (a connection failure) is a host name that has no address."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror) and e.errno in _NO_ADDRESS:
            return True
        # requests wraps urllib3's MaxRetryError, whose ``reason`` wraps the gaierror.
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return False


def _tls_failure(host: str, exc: BaseException) -> RegistryUnreachableError:
    """The error for a failed TLS handshake with ``host``, naming OpenSSL's reason."""
    found = re.search(r"\[SSL: ([A-Z0-9_]+)\] (.+?) \(_ssl\.c", str(exc))
    reason = found.group(2) if found else _reason(exc)
    code = found.group(1) if found else None
    cls = _TLSRefused if code in _TLS_FOR_GOOD else RegistryUnreachableError
    return cls(
        f"{host}: TLS failed ({reason}); for a registry without TLS or without a trusted "
        "certificate use --tls-verify=false"
    )


#: The most of an answer that is not a blob (a manifest, an error, a token) that is read: a
#: registry that sends more is refused without its answer being read whole (distribution's
#: own limit on a manifest is 4 MiB).
BODY_MAX = 4 << 20
#: The most of an error answer to a streamed request (a blob's) read for its error text.
_ERROR_BODY_MAX = 64 << 10
#: Redirects followed for one request (requests' own limit is 30).
_MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _read_body(response: requests.Response, what: str) -> None:
    """Read the body of ``response`` (sent with ``stream=True``) into it, as ``stream=False``
    would, but no more than :data:`BODY_MAX` bytes of it (decompressed): RegistryError beyond."""
    try:
        data = response.raw.read(BODY_MAX + 1, decode_content=True)
    except (urllib3.exceptions.HTTPError, OSError) as e:
        response.close()
        raise requests.exceptions.ConnectionError(e) from e
    if len(data) > BODY_MAX:
        response.close()
        raise RegistryError(
            f"{what}: answered {response.status_code} with more than {BODY_MAX} bytes; "
            "refused unread",
            status=response.status_code,
        )
    # Where requests keeps a body it has read: `content` and `json()` give it, and the
    # connection goes back to the pool (the body is read to its end).
    response._content = data
    response._content_consumed = True
    response.close()


def _unread_redirect(response: requests.Response, *_args: Any, **_kwargs: Any) -> None:
    """A redirect's body is never read: requests reads it whole even when it does not follow
    it (to prepare ``Response.next``), so the connection is closed and the body taken as
    empty first."""
    if response.is_redirect:
        response.raw.close()
        response._content = b""
        response._content_consumed = True


def retrying(
    what: str,
    attempt: Callable[[], _T],
    *,
    attempts: int = ATTEMPTS,
    stop: threading.Event | None = None,
) -> _T:
    """Run ``attempt`` until it succeeds; connection failures and 5xx answers are retried with
    exponential backoff, anything else (and the last failure) is raised. Once ``stop`` is set
    (the push or pull was interrupted or failed elsewhere), the failure is raised instead of
    being tried again.

    Nested calls (a request inside a blob transfer that is retried whole) run once: only the
    outermost level retries, so waits do not multiply."""
    if getattr(_nesting, "depth", 0):
        return attempt()
    _nesting.depth = 1
    try:
        return _retry(what, attempt, attempts, stop)
    finally:
        _nesting.depth = 0


def _retry(what: str, attempt: Callable[[], _T], attempts: int, stop: threading.Event | None) -> _T:
    delay = BACKOFF
    for n in range(1, attempts + 1):
        try:
            return attempt()
        except RegistryError as e:
            unreachable = isinstance(e, RegistryUnreachableError) and not isinstance(e, _ForGood)
            retry = unreachable or e.status in _RETRY_STATUS
            if not retry or n == attempts:
                if n > 1 and retry:
                    raise type(e)(
                        f"{e} (after {attempts} attempts at {what})", status=e.status, code=e.code
                    ) from e
                raise
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise  # stopped while waiting: not tried again
        delay *= 2
    raise AssertionError("unreachable")


class Registry:
    """A session with one registry (see the module docs). Safe to use from several threads."""

    def __init__(
        self,
        host: str,
        *,
        tls_verify: bool = True,
        credentials: tuple[str, str] | None = None,
        connections: int = 8,
    ) -> None:
        """``host`` is ``HOST[:PORT]``; ``credentials`` default to the docker config's."""
        self.host = host
        self.tls_verify = tls_verify
        self.credentials = credentials or docker_config_credentials(host)
        self.session = requests.Session()
        self.session.verify = tls_verify
        self.session.headers["User-Agent"] = "layerdiff"
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=2, pool_maxsize=connections, max_retries=0
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        if not tls_verify:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._base: str | None = None
        self._lock = threading.Lock()
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._authorization: str | None = None
        self._scopes: set[str] = set()
        self._token_scopes: frozenset[str] = frozenset()
        self._refused: set[str] = set()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.session.close()

    # -- URLs ----------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """``https://HOST`` or ``http://HOST``, found by pinging ``/v2/`` once."""
        with self._lock:
            if self._base is None:
                self._base = self._ping()
            return self._base

    def url(self, path: str) -> str:
        """The absolute URL of an API path (``/v2/…``)."""
        return self.base + path

    def absolute(self, location: str, request_url: str) -> str:
        """A ``Location`` header made absolute: resolved against the URL of the request it
        answers, as a redirect's is (a registry may give a path, or a name relative to that
        URL: ``UUID?_state=…``)."""
        return urllib.parse.urljoin(request_url, location)

    def _ping(self) -> str:
        schemes = ["https"] if self.tls_verify else ["https", "http"]
        last: Exception | None = None
        for scheme in schemes:
            base = f"{scheme}://{api_host(self.host)}"
            try:
                url = f"{base}/v2/"
                response = retrying(
                    url,
                    functools.partial(self._send, "GET", url, {}, None, False, _TIMEOUT),
                    attempts=1 if scheme == "https" and len(schemes) > 1 else ATTEMPTS,
                )
            except RegistryUnreachableError as e:
                last = e
                continue
            if response.status_code not in (200, 401):
                raise self._error(response, "GET /v2/ (is this a registry?)")
            if response.status_code == 401:
                self._challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
            return base
        assert last is not None
        raise last

    # -- requests ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        data: Any = None,
        stream: bool = False,
        expect: Iterable[int] = (200,),
        replayable: bool = True,
        timeout: tuple[float, float] = _TIMEOUT,
    ) -> requests.Response:
        """Send a request with auth; return the response if its status is in ``expect``.

        ``path_or_url`` is an API path (``/v2/…``) or an absolute URL (a ``Location``).
        ``scopes`` are the token scopes it needs. Connection failures and 5xx are retried when
        ``replayable`` (the body, if any, can be sent again); a 401 is answered once by
        (re)authenticating. Other statuses raise RegistryError. ``timeout`` is (connect, read)
        in seconds.
        """
        url = path_or_url if "://" in path_or_url else self.url(path_or_url)
        wanted = set(scopes)
        expected = frozenset(expect)
        what = f"{method} {urllib.parse.urlsplit(url).path}"

        def attempt() -> requests.Response:
            response = self._authorized_send(method, url, headers, data, stream, wanted, timeout)
            if response.status_code in expected:
                return response
            raise self._error(response, what)

        if replayable:
            return retrying(f"{self.host}: {what}", attempt)
        return attempt()

    def _authorized_send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        data: Any,
        stream: bool,
        scopes: set[str],
        timeout: tuple[float, float],
    ) -> requests.Response:
        base = self.base  # the ping learns the scheme and the auth challenge
        if _origin(url) != _origin(base):
            # A Location on another host (a storage service's): the registry's credentials are
            # not sent there, as they are not on a redirect to another host, nor is its 401
            # taken for the registry's challenge.
            return self._send(method, url, dict(headers or {}), data, stream, timeout)
        auth = self._auth_for(scopes)
        response = self._send(method, url, {**(headers or {}), **auth}, data, stream, timeout)
        if response.status_code != 401:
            return response
        challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        response.close()
        with self._lock:
            self._challenge = challenge
            scheme, params = challenge
            if scheme == "bearer" and params.get("scope"):
                scopes = scopes | set(params["scope"].split(" "))
            self._authorization = None
            self._token_scopes = frozenset()
        if hasattr(data, "seek"):
            data.seek(0)
        auth = self._auth_for(scopes, fresh=True)
        return self._send(method, url, {**(headers or {}), **auth}, data, stream, timeout)

    def _auth_for(self, scopes: set[str], *, fresh: bool = False) -> dict[str, str]:
        """The Authorization header for a request needing ``scopes`` (none: anonymous)."""
        with self._lock:
            if self._challenge is None:
                return {}
            scheme, params = self._challenge
            if scheme == "basic":
                if self.credentials is None:
                    if fresh:
                        raise RegistryAuthError(
                            f"{self.host}: the registry asks for credentials (give --creds "
                            "USER:PASS or log in with docker login)",
                            status=401,
                        )
                    return {}
                token = base64.b64encode(":".join(self.credentials).encode()).decode()
                return {"Authorization": f"Basic {token}"}
            if not scheme:
                raise RegistryAuthError(
                    f"{self.host}: the registry refused access (401) and named no way to "
                    "authenticate (no WWW-Authenticate)",
                    status=401,
                )
            if scheme != "bearer":
                raise RegistryAuthError(
                    f"{self.host}: unsupported authentication scheme {scheme!r}", status=401
                )
            # The session's scopes grow only by those a token was given for: a scope the token
            # server refuses (a mount's source the user may not read) is not asked for again by
            # every later request.
            wanted = self._scopes | scopes
            if fresh or self._authorization is None or not wanted <= self._token_scopes:
                self._authorization = f"Bearer {self._fetch_token(params, wanted)}"
                self._token_scopes = frozenset(wanted)
            self._scopes = wanted
            return {"Authorization": self._authorization}

    def refuse_scope(self, scope: str) -> None:
        """Ask for ``scope`` no more in this session: a request that needed it (a mount from a
        repository the user may no longer read) was refused, and a token that still names it
        would be refused too by a token server that refuses instead of leaving it out."""
        with self._lock:
            self._refused.add(scope)
            self._scopes.discard(scope)

    def refused(self, scope: str) -> bool:
        """Whether :meth:`refuse_scope` gave up ``scope``."""
        with self._lock:
            return scope in self._refused

    def _fetch_token(self, params: dict[str, str], scopes: set[str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"{self.host}: bearer challenge without a realm", status=401)
        query: list[tuple[str, str]] = []
        if params.get("service"):
            query.append(("service", params["service"]))
        query += [("scope", s) for s in sorted(scopes)]
        url = f"{realm}{'&' if '?' in realm else '?'}{urllib.parse.urlencode(query)}"
        auth = self.credentials
        try:
            response = self.session.get(
                url,
                auth=auth,
                verify=self.tls_verify,
                timeout=_TIMEOUT,
                stream=True,
                allow_redirects=False,
                hooks={"response": _unread_redirect},
            )
            _read_body(response, f"token server {realm}")
        except requests.RequestException as e:
            raise RegistryUnreachableError(f"token server {realm} unreachable: {_reason(e)}") from e
        if response.status_code in (401, 403):
            raise RegistryAuthError(
                f"{self.host}: token server {realm} refused "
                f"{'the credentials' if auth else 'anonymous access'} "
                f"({response.status_code})",
                status=response.status_code,
            )
        try:
            body = response.json()
            token: object = body.get("token") or body.get("access_token")
        except ValueError:
            token = None
        if response.status_code != 200 or not isinstance(token, str):
            raise RegistryAuthError(
                f"{self.host}: token server {realm} answered {response.status_code} "
                "without a token",
                status=response.status_code,
            )
        return token

    def _follow(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: Any,
        timeout: tuple[float, float],
    ) -> requests.Response:
        """Send, following the redirects of a GET or HEAD (a blob may be served elsewhere)
        without reading their bodies, which requests would read whole; the Authorization
        header is not sent on to another host (a storage service's signed URL needs none)."""
        for _ in range(_MAX_REDIRECTS + 1):
            response = self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                # On each request: requests lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE
                # override the session's ``verify=False``.
                verify=self.tls_verify,
                stream=True,
                timeout=timeout,
                allow_redirects=False,
                hooks={"response": _unread_redirect},
            )
            location = response.headers.get("Location")
            if (
                response.status_code not in _REDIRECTS
                or method not in ("GET", "HEAD")
                or not location
            ):
                return response
            response.close()
            target = urllib.parse.urljoin(url, location)
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
        raise RegistryError(f"{self.host}: {method} {url}: more than {_MAX_REDIRECTS} redirects")

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        data: Any,
        stream: bool,
        timeout: tuple[float, float],
    ) -> requests.Response:
        try:
            response = self._follow(method, url, dict(headers), data, timeout)
            if not stream:
                _read_body(response, f"{self.host}: {method} {urllib.parse.urlsplit(url).path}")
            return response
        except requests.exceptions.SSLError as e:
            raise _tls_failure(self.host, e) from e
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as e:
            where = url.partition("?")[0]
            raise _ForGood(f"registry {self.host}: {method} {where}: not a valid URL") from e
        except requests.RequestException as e:
            if _unresolved(e):
                raise _ForGood(
                    f"registry {self.host} unreachable: {method} "
                    f"{urllib.parse.urlsplit(url).path}: {_reason(e)}"
                ) from e
            raise RegistryUnreachableError(
                f"registry {self.host} unreachable: {method} {urllib.parse.urlsplit(url).path}: "
                f"{_reason(e)}"
            ) from e

    def _error(self, response: requests.Response, what: str) -> RegistryError:
        """A RegistryError for an unexpected answer, with the registry's own error text."""
        code: str | None = None
        detail = ""
        try:
            # A streamed answer (a blob's) is read no further than an error text needs.
            body = (
                response.content
                if response._content_consumed
                else response.raw.read(_ERROR_BODY_MAX, decode_content=True)
            )
            # Whatever the body holds, only an ``errors`` list whose first entry has a string
            # code or message is read: any other shape leaves the status to speak alone.
            obj = json.loads(body)
            errors = obj.get("errors") if isinstance(obj, dict) else None
            first = errors[0] if isinstance(errors, list) and errors else None
            if isinstance(first, dict):
                found, message = first.get("code"), first.get("message")
                code = found if isinstance(found, str) else None
                detail = message if isinstance(message, str) else ""
        except (ValueError, RecursionError, OSError, urllib3.exceptions.HTTPError):
            code, detail = None, ""
        finally:
            response.close()
        status = response.status_code
        text = f"{self.host}: {what}: {status} {response.reason or ''}".rstrip()
        if code:
            text += f": {code}"
        if detail:
            text += f" ({detail})"
        if status == 401:
            text += (
                ": the registry refused the credentials"
                if self.credentials
                else ": credentials needed (give --creds USER:PASS or log in with docker login)"
            )
        cls = RegistryAuthError if status in (401, 403) else RegistryError
        return cls(text, status=status, code=code)
