"""One HTTP request to an OpenAI-compatible server, streamed or not, timed from the client's side (stdlib only, so
the load generator runs in any engine's venv).

A streamed reply is read as server-sent events (``data: {...}`` lines, ``data: [DONE]`` last); the time to first
token is taken at the first event that carries generated text. An aborted request closes its connection after a
given number of events, as a client that goes away mid-stream does: the server must notice and free the KV it held.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_S = 600.0


@dataclass
class Outcome:
    """What one request got back."""

    status: int  # the HTTP status; 0 when the connection failed or the client aborted before a status
    aborted: bool = False  # the client closed the connection on purpose
    error: str | None = None  # the server's error message (4xx / 5xx) or the connection error
    ttft_s: float | None = None  # seconds to the first generated text (streamed requests only)
    latency_s: float = 0.0  # seconds from sending to the last byte (or to the abort)
    texts: dict[int, str] = field(default_factory=dict)  # generated text per choice index
    output_tokens: int = 0  # the server's usage count, else the number of text events

    @property
    def refused(self) -> bool:
        return 400 <= self.status < 500

    @property
    def failed(self) -> bool:
        return self.status >= 500 or (self.status == 0 and not self.aborted)


def post(port: int, path: str, body: bytes, *, stream: bool, abort_after: int | None = None,
         api_key: str | None = None, host: str = "127.0.0.1") -> Outcome:
    """POST ``body`` to ``path`` and read the reply; ``abort_after`` events into a stream, hang up."""
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    start = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            return Outcome(response.status, error=_error_message(response.read()),
                           latency_s=time.perf_counter() - start)
        if not stream:
            outcome = Outcome(200)
            _add_choices(outcome, json.loads(response.read()))
            outcome.latency_s = time.perf_counter() - start
            return outcome
        return _read_stream(connection, response, start, abort_after)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(0, error=f"{type(exc).__name__}: {exc}", latency_s=time.perf_counter() - start)
    finally:
        connection.close()


def get(port: int, path: str, host: str = "127.0.0.1", api_key: str | None = None) -> tuple[int, str]:
    """(status, body text) of a GET (health, metrics, models)."""
    connection = http.client.HTTPConnection(host, port, timeout=30)
    headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def _read_stream(connection: http.client.HTTPConnection, response: http.client.HTTPResponse, start: float,
                 abort_after: int | None) -> Outcome:
    outcome = Outcome(200)
    events = 0
    usage_seen = False
    while True:
        line = response.readline()
        if not line:
            break  # the server closed the stream without [DONE]
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[len(b"data:"):].strip()
        if payload == b"[DONE]":
            break
        chunk = json.loads(payload)
        if "error" in chunk:  # an error raised after the stream began
            outcome.status = int(chunk["error"].get("code") or 500)
            outcome.error = chunk["error"].get("message", str(chunk["error"]))
            break
        got_text = _add_choices(outcome, chunk)
        if chunk.get("usage"):
            outcome.output_tokens = int(chunk["usage"].get("completion_tokens") or 0)
            usage_seen = True
        if got_text:
            events += 1
            if outcome.ttft_s is None:
                outcome.ttft_s = time.perf_counter() - start
            if abort_after is not None and events >= abort_after:
                _hang_up(connection)
                outcome.aborted = True
                break
    if not usage_seen:
        outcome.output_tokens = events
    outcome.latency_s = time.perf_counter() - start
    return outcome


def _add_choices(outcome: Outcome, reply: dict[str, Any]) -> bool:
    """Fold a reply or a stream chunk's choices into ``outcome``; whether it carried generated text."""
    got_text = False
    for choice in reply.get("choices") or []:
        index = int(choice.get("index", 0))
        text = choice.get("text")
        if text is None:
            message = choice.get("delta") or choice.get("message") or {}
            text = message.get("content") or ""
        if text:
            got_text = True
        outcome.texts[index] = outcome.texts.get(index, "") + text
    if not reply.get("object", "").endswith("chunk") and reply.get("usage"):
        outcome.output_tokens = int(reply["usage"].get("completion_tokens") or 0)
    return got_text


def _hang_up(connection: http.client.HTTPConnection) -> None:
    """Close the socket at once (both directions), as a client process that dies does."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    connection.close()


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}`` or ``{"message": ...}``)."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:500]
        if isinstance(data.get("detail"), str):
            return data["detail"][:500]
        return str(error)[:500]
    return text[:500]
