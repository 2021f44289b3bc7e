"""The server's API key: read from the variable named by ``server.api_key_env``, sent as a bearer token.

The key lives only in this object and in the headers built from it. The config and the record carry the
variable's *name*; the key has ``repr=False`` (an Auth in a traceback or log shows no key), and
``scrub`` takes it out of any text we keep, in case a server or a library echoes a header back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

REDACTED = "<redacted: server.api_key_env>"


@dataclass(frozen=True)
class Auth:
    env: Optional[str] = None  # the variable's name (server.api_key_env); None: no key is ever sent
    key: Optional[str] = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, env: Optional[str]) -> "Auth":
        """Read at run time, never in validation: an unset or empty variable sends no header."""
        return cls(env=env, key=(os.environ.get(env) or None) if env else None)

    @property
    def scheme(self) -> str:
        return "bearer" if self.key else "none"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def refused(self, status: int, url: str) -> str:
        """One line for a 401/403: which key to set, never the key."""
        if not self.env:
            hint = "set server.api_key_env to the name of a variable holding the server's key"
        elif not self.key:
            hint = f"set {self.env} (server.api_key_env) to the server's key"
        else:
            hint = f"the server refused the key in {self.env} (server.api_key_env)"
        return f"HTTP {status} from {url}: {hint}"

    def scrub(self, value: Any) -> Any:
        """``value`` (strings, lists, dicts of them) with every occurrence of the key replaced."""
        if not self.key:
            return value
        if isinstance(value, str):
            return value.replace(self.key, REDACTED)
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        return value


NO_AUTH = Auth()
AUTH_REFUSED = (401, 403)
