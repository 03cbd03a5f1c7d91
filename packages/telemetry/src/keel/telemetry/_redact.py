"""`redact_url`: a URL or DSN safe to print (passwords and tokens masked).

    >>> redact_url("redis://:s3cret@cache:6379/0")
    'redis://:***@cache:6379/0'
    >>> redact_url("postgresql://keel:pw@db/keel?sslpassword=x&sslmode=require")
    'postgresql://keel:***@db/keel?sslpassword=***&sslmode=require'
    >>> redact_url("host=db user=keel password=pw")
    'host=db user=keel password=***'
    >>> redact_url("sqlite:////var/keel/events.db")
    'sqlite:////var/keel/events.db'

Every place Keel prints or logs a service address goes through it.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "redact_url"]

MASK = "***"
_SECRET_KEY = re.compile(r"(pass|pwd|token|secret|key|auth|credential|signature)", re.I)
# libpq keyword/value DSN: password=... (quoted or not)
_KV_SECRET = re.compile(r"(\b\w*(?:password|passwd|pwd|token|secret)\w*\s*=\s*)('[^']*'|\S+)", re.I)


def redact_url(url: str | None) -> str:
    """`url` with any password (user info, secret-looking query parameters, libpq
    `password=`) replaced by `***`. Never raises; `None` gives ""."""
    if not url:
        return ""
    text = str(url)
    if "://" not in text:
        return _KV_SECRET.sub(lambda m: m.group(1) + MASK, text)
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            if sep:
                netloc = f"{user}:{MASK}@{hostport}"
            elif user and parts.scheme.startswith(("nats", "tls")):
                netloc = f"{MASK}@{hostport}"  # nats://TOKEN@host: the user part is the token
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_SECRET_KEY.search(k) for k, _ in pairs):
                query = urlencode(
                    [(k, MASK if _SECRET_KEY.search(k) else v) for k, v in pairs], safe="*"
                )
        if netloc == parts.netloc and query == parts.query:
            return text  # no secret: unchanged (urlunsplit would turn sqlite://// into sqlite://)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        # unparsable: drop everything between the scheme and the last '@'
        scheme, _, rest = text.partition("://")
        return f"{scheme}://{MASK}@{rest.rpartition('@')[2]}" if "@" in rest else text
