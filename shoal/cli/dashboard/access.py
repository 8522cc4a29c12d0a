"""Who may use the dashboard: anyone on this machine when it listens on loopback, anyone
holding the printed token otherwise.

The dashboard acts with swctl's credentials (it can drain nodes and delete tasks), so a
listener reachable from the network must not be open: any address other than loopback
gets a random token, printed once with the URL, and every request — the page, the event
stream, actions, logs — must carry it: ``?token=`` in the printed URL, then a
``SameSite=Strict`` HttpOnly cookie the page is served with (so its stylesheet, script and
EventSource carry it too), or an ``Authorization: Bearer`` header. Comparison is
constant-time.

On loopback two browser-borne attacks remain and are closed here too: a web page the
user visits posting to ``127.0.0.1:8080`` (actions require a custom header, which a
cross-origin page cannot send without a CORS preflight the dashboard never approves), and
DNS rebinding (a hostile name resolving to 127.0.0.1: the Host header must be a loopback
name or address).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from typing import Final

#: The header every action request carries (see the module docstring).
ACTION_HEADER: Final = "X-Shoal-Dashboard"
LOOPBACK_NAMES: Final = frozenset({"localhost", "ip6-localhost"})
COOKIE: Final = "shoal_dashboard_token"


def is_loopback(address: str) -> bool:
    if address in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _host_name(host: str) -> str:
    """``127.0.0.1`` from ``127.0.0.1:8080``, ``::1`` from ``[::1]:8080``."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class Access:
    """The rule for one listener: ``token`` None means loopback-only, no token."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    def refusal(self, host: str | None, query: Mapping[str, str],
                headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
        """Why a request is refused, or None when it may proceed."""
        if self.token is None:
            if not is_loopback(_host_name(host or "")):
                return (f"this dashboard serves localhost only, not the host name "
                        f"{host!r}; open it as http://127.0.0.1:PORT/")
            return None
        given = query.get("token") or cookies.get(COOKIE) or ""
        auth = headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return ("a token is required: open the URL `swctl dashboard` printed (it ends "
                    "in ?token=...)")
        return None

    @staticmethod
    def action_refusal(headers: Mapping[str, str]) -> str | None:
        if headers.get(ACTION_HEADER) != "1":
            return f"actions must be sent by the dashboard page (missing {ACTION_HEADER})"
        return None
