"""Secrets never reach a file: credentials inside URLs (`http://user:pass@host`) and secret-looking query
parameters (`?api_key=...`) are replaced with `***` wherever a URL is written (manifests, dataset cards, recipes,
results, logs). API keys themselves are read from the environment or a key file and never enter a config.

    redact_url("http://u:pw@h:8000/v1?api_key=k&x=1")   # 'http://***@h:8000/v1?api_key=***&x=1'
    redact_secrets({"engine": {"base_urls": [...]}})     # the same, everywhere inside a JSON-like value
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_PARAMETER = re.compile(r"(key|token|secret|password|passwd|pwd|auth|credential|signature|sig)$|^sig",
                              re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def redact_url(url: str) -> str:
    """The URL with its userinfo and the values of secret-looking query parameters masked."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # not parseable as a URL: mask everything after the scheme rather than risk a leak
        return url.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + (parts.hostname or "") + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if SECRET_PARAMETER.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_secrets(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings) with every URL inside a string redacted."""
    if isinstance(value, str):
        return _URL.sub(lambda m: redact_url(m.group(0)), value) if "://" in value else value
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_secrets(v) for v in value)
    return value
