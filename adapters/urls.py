"""URL normalization and credential redaction: nothing secret may reach a log, a file or a token."""

from __future__ import annotations

import os
import posixpath
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY_KEY = re.compile(r"sig|token|key|secret|pass|cred|auth|security", re.I)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY_IN_TEXT = re.compile(
    r"([?&][^=&\s]*(?:sig|token|key|secret|pass|cred|auth|security)[^=&\s]*=)[^&\s'\"]+", re.I
)


def has_scheme(url: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) is not None


def normalize_url(url: str) -> str:
    """The URL as shown to users and hashed into cache tokens: absolute, no credentials."""
    if not has_scheme(url):
        return "file://" + os.path.abspath(os.path.expanduser(url))
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode(
        [(k, "***" if _SECRET_QUERY_KEY.search(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    )
    path = parts.path.rstrip("/") or ("/" if parts.scheme in ("http", "https") else "")
    return urlunsplit((parts.scheme.lower(), netloc, path, query, ""))


def redact(text: str) -> str:
    """Remove userinfo and secret-looking query values from any text (log lines, error messages)."""
    return _SECRET_QUERY_IN_TEXT.sub(r"\1***", _USERINFO.sub("", text))


def join_url(base_dir: str, relative: str) -> str:
    """`relative` resolved against the folder URL `base_dir` ('..' allowed, as in BDV XML paths).

    The base keeps its scheme, host and any credentials; a local path stays a local path.
    """
    if has_scheme(relative):
        return relative
    if not has_scheme(base_dir):
        return os.path.normpath(os.path.join(os.path.expanduser(base_dir), relative))
    parts = urlsplit(base_dir)
    path = posixpath.normpath(posixpath.join(parts.path or "/", relative))
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def parent_url(url: str) -> str:
    """The folder that holds the file at `url`."""
    if not has_scheme(url):
        return os.path.dirname(os.path.abspath(os.path.expanduser(url)))
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.dirname(parts.path.rstrip("/")), "", ""))
