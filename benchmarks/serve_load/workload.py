"""The request mix a load run sends: built once from a seed, so two runs (and the offline replay) see the same
requests.

Normal requests are drawn from the served model's prompts: chat or completion, streamed or not, greedy or sampled
with a seed, sometimes ``n`` > 1 or a stop string, about one in ten hung up mid-stream, a few with prompts longer
than the KV budget leaves room for (the server must refuse those, as ``run`` does). Completion prompts are sent as
token ids (the chat-templated ids ``run`` generates from), so a greedy completion is comparable token for token
with ``dynts-bench run`` offline. Bad requests each break one rule and must be refused (4xx) with a message that
names what was wrong.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

CHAT = "/v1/chat/completions"
COMPLETION = "/v1/completions"


@dataclass(frozen=True)
class LoadRequest:
    """One request of the mix, ready to send."""

    request_id: str
    path: str
    body: bytes
    stream: bool
    prompt_ids: tuple[int, ...] = ()  # what the model sees (chat-templated), for the offline replay
    greedy: bool = False
    n: int = 1
    stop: str | None = None
    abort_after: int | None = None  # hang up after this many streamed events
    long_prompt: bool = False  # longer than the budget leaves room for: refused (400) when the policy evicts
    bad: str | None = None  # which rule a bad request breaks
    names: tuple[str, ...] = ()  # a refusal must name one of these (lower case)

    def must_be_refused(self, budgeted: bool) -> bool:
        """Whether the server must refuse it; ``budgeted``: the served policy keeps the prompt within a budget."""
        return self.bad is not None or (self.long_prompt and budgeted)

    @property
    def comparable(self) -> bool:
        """Whether its reply must equal the offline run's: greedy, one choice, read to the end, servable under
        every schedule."""
        return self.greedy and self.n == 1 and self.abort_after is None and not self.must_be_refused(True)


@dataclass(frozen=True)
class MixShares:
    """The shares of each kind of request (each drawn independently per request)."""

    chat: float = 0.5
    stream: float = 0.75
    greedy: float = 0.6
    abort: float = 0.1
    long_prompt: float = 0.05
    n_choices: float = 0.1  # of the sampled requests: n = 2
    stop: float = 0.1


@dataclass
class Prompts:
    """The served model's prompts: text and chat-templated token ids, and the ids that end a generation."""

    texts: list[str]
    ids: list[list[int]]
    stop_ids: list[int]
    stop_words: list[str] = field(default_factory=lambda: ["answer"])


def build_mix(model: str, prompts: Prompts, count: int, *, seed: int, budget: int, max_tokens: int,
              shares: MixShares = MixShares()) -> list[LoadRequest]:
    """``count`` normal requests, deterministic in ``seed``."""
    rng = random.Random(seed)
    mix = []
    for i in range(count):
        k = i % len(prompts.texts)
        chat = rng.random() < shares.chat
        long_prompt = not chat and rng.random() < shares.long_prompt
        greedy = rng.random() < shares.greedy
        n = 2 if not greedy and rng.random() < shares.n_choices else 1
        stop = rng.choice(prompts.stop_words) if rng.random() < shares.stop else None
        stream = rng.random() < shares.stream
        abort = rng.randint(1, 20) if stream and rng.random() < shares.abort else None
        ids = _long_prompt(prompts, k, budget) if long_prompt else prompts.ids[k]
        body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "n": n, "stream": stream,
                                "stop_token_ids": prompts.stop_ids, "temperature": 0.0 if greedy else 0.8}
        if not greedy:
            body["seed"] = seed * 100_003 + i
        if stop is not None:
            body["stop"] = [stop]
        if stream:
            body["stream_options"] = {"include_usage": True}
        if chat:
            body["messages"] = [{"role": "user", "content": prompts.texts[k]}]
        else:
            body["prompt"] = ids
        mix.append(LoadRequest(f"load-{i}", CHAT if chat else COMPLETION, json.dumps(body).encode(), stream,
                               tuple(ids), greedy, n, stop, abort, long_prompt,
                               names=("prompt",) if long_prompt else ()))
    return mix


def _long_prompt(prompts: Prompts, k: int, budget: int) -> list[int]:
    """Prompt ids longer than the budget: consecutive prompts' ids joined (the last one's template ends it)."""
    ids: list[int] = []
    j = k
    while len(ids) <= budget:
        ids = prompts.ids[j % len(prompts.ids)] + ids
        j += 1
    return ids


def bad_requests(model: str, prompts: Prompts, position_limit: int) -> list[LoadRequest]:
    """One request per rule a client can break, with the words its refusal must name."""
    ok = {"model": model, "messages": [{"role": "user", "content": prompts.texts[0]}], "max_tokens": 16}

    def request(name: str, body: dict[str, Any] | bytes, names: tuple[str, ...], path: str = CHAT) -> LoadRequest:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return LoadRequest(f"bad-{name}", path, data, False, bad=name, names=names)

    return [
        request("malformed-json", b'{"model": "' + model.encode() + b'", "messages": [', ("json", "decode", "parse")),
        request("unknown-model", {**ok, "model": "no-such-model"}, ("model",)),
        request("max-tokens-too-large", {**ok, "max_tokens": position_limit * 10},
                ("max_tokens", "max_completion_tokens", "context length", "too long")),
        request("negative-temperature", {**ok, "temperature": -1.0}, ("temperature",)),
        request("empty-prompt", {"model": model, "prompt": "", "max_tokens": 16}, ("prompt", "empty", "input"),
                COMPLETION),
    ]
