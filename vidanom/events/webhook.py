"""POSTing each payload as JSON to a URL, retried until the endpoint answers (see notify.Sender).

A request that gets no answer within REQUEST_TIMEOUT seconds is abandoned and tried again after the
backoff's wait (1, 2, 4 ... 30 s), so an endpoint that hangs holds up only this output's thread.
An answer of 2xx is delivered; 4xx (but 408 and 429) means the request itself is wrong, and it is
counted as failed rather than sent again; anything else is retried.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from .. import __version__
from .notify import Sender
from .options import http_address

REQUEST_TIMEOUT = 5.0  # seconds for one POST: connecting, sending, and the answer
RETRY_CODES = (408, 429)  # client errors that are worth a retry
BACKOFF = (1.0, 30.0)  # seconds before the first retry; the longest wait


class WebhookNotifier(Sender):
    name = "webhook"

    def __init__(self, url: str, queue: int, timeout: float | None = None) -> None:
        self.url, self.timeout = url, REQUEST_TIMEOUT if timeout is None else timeout
        super().__init__(queue, BACKOFF)

    def attempt(self, payload: dict[str, Any]) -> bool | None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "User-Agent": f"vidanom/{__version__}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read()
            return True
        except urllib.error.HTTPError as exc:
            self._error(f"POST {self.url}: HTTP {exc.code} {exc.reason}")
            return None if exc.code >= 500 or exc.code in RETRY_CODES else False
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            self._error(f"POST {self.url}: {getattr(reason, 'strerror', None) or reason}; retrying")
            return None


def reachable(host: str, port: int, timeout: float = 2.0) -> str | None:
    """None if a TCP connection to host:port opens within timeout, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc.strerror or exc)


def url_reachable(url: str) -> str | None:
    return reachable(*http_address(url))
