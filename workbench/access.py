"""What the operator lets the app's visitors do, read from environment variables when the app starts a run.

Streamlit has no login: whoever reaches the app's address uses it. Five things reach beyond the app itself, and
each is off unless the operator allows it:

``WORKBENCH_ALLOW_REMOTE_CODE``
    the "Allow remote code" checkbox: a hub model's own Python code (``trust_remote_code``) runs on the server.
``WORKBENCH_ALLOW_PATHS``
    a local model directory or ``.gguf`` file typed in the recipe form: any path the server can read.
``WORKBENCH_ALLOW_DOWNLOADS``
    a hub id that is not in the server's Hugging Face cache yet: a download of up to many GB. The embedded model
    and hub models already in the cache need no download and always load.
``WORKBENCH_ALLOW_SERVERS``
    a server URL typed as the model (an OpenAI-compatible server): the app then sends requests to any address the
    visitor names, with the key held by any environment variable they name.
``WORKBENCH_ALLOW_CACHE_SETTINGS``
    the response cache's size limit and its Clear button, which apply to every user of the server.

Each is ``1``/``true``/``yes`` or ``0``/``false``/``no``. Unset, the first four are allowed only when the app
listens on a loopback address (``localhost``, ``127.x.x.x``, ``::1``): an empty or unset address makes Streamlit
listen on every interface, so it is not loopback. ``WORKBENCH_ALLOW_CACHE_SETTINGS`` defaults to allowed when the
response cache is shared and off when it is kept per session.

``WORKBENCH_CACHE_SCOPE`` = ``shared`` | ``session`` says whose answers the response cache replays: ``shared``
(the default on loopback) replays any answer stored by any session or by the CLI; ``session`` (the default
otherwise) replays, to a browser session, only answers that session stored itself, so that nobody sees another
person's questions or answers.

A value that is none of these is reported in ``problems`` and counts as off (for the cache scope: ``session``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

TRUE = ("1", "true", "yes")
FALSE = ("0", "false", "no")
SCOPES = ("shared", "session")
SCOPE_VARIABLE = "WORKBENCH_CACHE_SCOPE"

# feature -> (its environment variable, what it lets a visitor do, as the start of a sentence)
FEATURES = {
    "remote_code": ("WORKBENCH_ALLOW_REMOTE_CODE", "Running a hub model's own code (trust_remote_code)"),
    "paths": ("WORKBENCH_ALLOW_PATHS", "Loading a local model directory or .gguf file typed in"),
    "downloads": ("WORKBENCH_ALLOW_DOWNLOADS", "Downloading a hub model that is not in this server's Hugging Face "
                                               "cache"),
    "servers": ("WORKBENCH_ALLOW_SERVERS", "Measuring a server typed in as the model (requests to any address, with "
                                           "the key of any environment variable named)"),
    "cache_settings": ("WORKBENCH_ALLOW_CACHE_SETTINGS", "Changing the shared response cache's size limit or "
                                                         "clearing it"),
}


@dataclass(frozen=True)
class Access:
    """What this server allows its visitors (see the module's docstring); build it with ``from_env``."""

    remote_code: bool
    paths: bool
    downloads: bool
    cache_settings: bool
    servers: bool
    cache_scope: str  # "shared" | "session"
    loopback: bool  # the app listens on a loopback address only
    problems: tuple[str, ...] = ()  # variables with a value that means nothing (counted as off)

    @classmethod
    def from_env(cls, address: str | None, environ: Mapping[str, str] | None = None) -> Access:
        """What the environment allows for an app listening on ``address`` (Streamlit's ``server.address``)."""
        environ = os.environ if environ is None else environ
        loopback = is_loopback(address)
        problems: list[str] = []
        scope = environ.get(SCOPE_VARIABLE, "").strip().lower() or ("shared" if loopback else "session")
        if scope not in SCOPES:
            problems.append(f"{SCOPE_VARIABLE}={environ[SCOPE_VARIABLE]!r} is neither 'shared' nor 'session'; the "
                            "response cache is kept per session until it is fixed.")
            scope = "session"

        def flag(feature: str, default: bool) -> bool:
            variable = FEATURES[feature][0]
            value = environ.get(variable, "").strip().lower()
            if not value:
                return default
            if value in TRUE or value in FALSE:
                return value in TRUE
            problems.append(f"{variable}={environ[variable]!r} is not 1/true/yes or 0/false/no; it counts as off "
                            "until it is fixed.")
            return False

        return cls(remote_code=flag("remote_code", loopback), paths=flag("paths", loopback),
                   downloads=flag("downloads", loopback), cache_settings=flag("cache_settings", scope == "shared"),
                   servers=flag("servers", loopback),
                   cache_scope=scope, loopback=loopback, problems=tuple(problems))

    def allows(self, feature: str) -> bool:
        """Whether ``feature`` (a key of ``FEATURES``) is allowed."""
        return bool(getattr(self, feature))

    def why_off(self, feature: str) -> str:
        """One sentence: the feature is off on this server, and which variable the operator sets to allow it."""
        variable, what = FEATURES[feature]
        return (f"{what} is off on this server; whoever runs it can allow it by starting the app with "
                f"{variable}=1 (see the README: anyone who can reach the app could then use it).")


def is_loopback(address: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses; False for an empty address (every interface) or any other."""
    host = (address or "").strip().strip("[]").lower()
    if host in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
