"""The one place that talks HTTP to an OpenAI-compatible endpoint.

It owns the cross-cutting policies, so callers only see typed outcomes: a concurrency limit,
budget reservations, backoff on 429/5xx/timeouts (honouring Retry-After), the answer cache,
the capability probe (structured outputs, context size; cached per base_url+model) and the
JSON answer ladder: json_schema -> json_object -> plain text, then one repair round-trip.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Literal, TypeVar

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ValidationError

from torchdoctor.agent.reasoning.llm.budget import Budget, estimate_tokens, tokens_for_chars
from torchdoctor.agent.reasoning.llm.cache import CachedAnswer, ResponseCache, answer_key
from torchdoctor.agent.reasoning.llm.config import OpenAIConfig
from torchdoctor.agent.reasoning.llm.responses import (
    AnswerShapeError,
    chat_completion,
    context_tokens,
)
from torchdoctor.agent.reasoning.llm.schema import ProbeAnswer, strict_schema

T = TypeVar("T", bound=BaseModel)
Mode = Literal["json_schema", "json_object", "plain", "cached"]
Message = dict[str, Any]

_RETRYABLE = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)
_UNSUPPORTED = (openai.BadRequestError, openai.UnprocessableEntityError)
_REFUSAL_WORDS = (
    "unsupported",
    "not supported",
    "unrecognized",
    "unknown parameter",
    "does not support",
    "only the default",
)
REPAIR_PROMPT = (
    "Your previous reply could not be used: {error}. Reply again with only the corrected JSON "
    "object, matching the requested shape, and nothing else."
)


class LLMUnavailable(Exception):
    """The endpoint could not answer (after retries), or refused the request."""


class AnswerInvalid(Exception):
    """The model's answer was not valid for the schema, even after one repair round-trip."""


@dataclass
class Capabilities:
    structured_outputs: bool
    context_tokens: int | None


@dataclass
class Usage:
    """What requests cost; `cache_hits` cost nothing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_chars: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    repairs: int = 0

    def add(self, other: Usage) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.__dataclass_fields__}


@dataclass
class Completion(Generic[T]):
    answer: T
    content: str
    usage: Usage
    cached: bool
    mode: Mode


@dataclass
class _ProbeRegistry:
    """Process-wide probe results, so parallel audits against one endpoint probe once."""

    results: dict[str, Capabilities] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_PROBES = _ProbeRegistry()


def content_chars(messages: list[Message]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


class LLMClient:
    def __init__(
        self,
        config: OpenAIConfig,
        budget: Budget,
        cache: ResponseCache | None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.budget = budget
        self.cache = cache
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._sdk = openai.OpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value() or "not-needed",
            timeout=config.timeout_s,
            max_retries=0,
        )
        self._json_object_ok = True
        self._schema_refused = False
        self._max_tokens_param: str = config.max_tokens_param
        self._refused_params: set[str] = set()
        self.probe_usage = Usage()
        """What the capability probe cost (counted in the budget, not in any point)."""

    @property
    def probe_key(self) -> str:
        return f"{self.config.base_url.rstrip('/')}|{self.config.model}"

    # -- capabilities -----------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        """Probe once per base_url+model (memory, then disk), honouring config overrides."""
        with _PROBES.lock:
            known = _PROBES.results.get(self.probe_key)
            if known is None and self.cache is not None:
                stored = self.cache.get_probe(self.probe_key)
                if stored is not None:
                    known = Capabilities(**stored)
                    _PROBES.results[self.probe_key] = known
            if known is None:
                known = self._probe()
                _PROBES.results[self.probe_key] = known
                if self.cache is not None:
                    self.cache.put_probe(self.probe_key, known.__dict__)
        structured = {"on": True, "off": False}.get(
            self.config.structured_outputs, known.structured_outputs
        )
        context = self.config.context_tokens or known.context_tokens
        return Capabilities(structured_outputs=structured, context_tokens=context)

    def _probe(self) -> Capabilities:
        structured = False
        if self.config.structured_outputs == "auto":
            messages = [{"role": "user", "content": 'Reply with the JSON object {"ok": true}.'}]
            try:
                self._request(
                    messages,
                    self.probe_usage,
                    max_tokens=64,
                    response_format=_json_schema_format("torchdoctor_probe", ProbeAnswer),
                )
                structured = True
            except (LLMUnsupported, AnswerUnusable):
                structured = False  # an odd probe answer means the defaults, never a failure
        return Capabilities(structured_outputs=structured, context_tokens=self._context_tokens())

    def _context_tokens(self) -> int | None:
        """The context length `GET /models` states; None (the default) on any failure."""
        try:
            with self._slots:
                raw = self._sdk.models.with_raw_response.list()
            payload = raw.http_response.json()
        except (openai.OpenAIError, ValueError):
            return None
        return context_tokens(payload, self.config.model)

    # -- structured answers -----------------------------------------------------------------

    def complete(
        self,
        messages: list[Message],
        response_model: type[T],
        schema_name: str,
        max_tokens: int | None = None,
    ) -> Completion[T]:
        """A validated answer: from the cache, else from the endpoint (with one repair).

        `max_tokens` bounds the completion (default: the configured `max_output_tokens`)."""
        key = answer_key(
            self.config.model,
            {
                "messages": messages,
                "schema": strict_schema(response_model),
                "name": schema_name,
                "temperature": self.config.temperature,
                "seed": self.config.seed,
            },
        )
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    answer = response_model.model_validate_json(hit.content)
                except ValidationError:
                    answer = None
                if answer is not None:
                    return Completion(answer, hit.content, Usage(cache_hits=1), True, "cached")
        usage = Usage()
        mode = self._mode()
        content = self._ask(messages, response_model, schema_name, mode, usage, max_tokens)
        try:
            answer = _parse(content, response_model)
        except AnswerInvalid as err:
            usage.repairs += 1
            repair = [
                *messages,
                {"role": "assistant", "content": content},
                {"role": "user", "content": REPAIR_PROMPT.format(error=err)},
            ]
            content = self._ask(repair, response_model, schema_name, mode, usage, max_tokens)
            answer = _parse(content, response_model)
        if self.cache is not None:
            self.cache.put(
                key,
                self.config.model,
                CachedAnswer(
                    content=answer.model_dump_json(),
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                ),
            )
        return Completion(answer, content, usage, False, mode)

    def _mode(self) -> Mode:
        if self.capabilities().structured_outputs and not self._schema_refused:
            return "json_schema"
        return "json_object" if self._json_object_ok else "plain"

    def _ask(
        self,
        messages: list[Message],
        model: type[BaseModel],
        name: str,
        mode: Mode,
        usage: Usage,
        max_tokens: int | None,
    ) -> str:
        formats: dict[Mode, dict[str, Any] | None] = {
            "json_schema": _json_schema_format(name, model),
            "json_object": {"type": "json_object"},
            "plain": None,
        }
        try:
            response = self._request(
                messages, usage, max_tokens=max_tokens, response_format=formats[mode]
            )
        except LLMUnsupported:
            if mode == "plain":
                raise LLMUnavailable("the endpoint rejected a plain chat request") from None
            if mode == "json_object":
                self._json_object_ok = False
            if mode == "json_schema":
                self._schema_refused = True
            fallback: Mode = "json_object" if mode == "json_schema" else "plain"
            return self._ask(messages, model, name, fallback, usage, max_tokens)
        return response.choices[0].message.content or "" if response.choices else ""

    # -- raw requests -----------------------------------------------------------------------

    def chat(self, messages: list[Message], tools: list[dict[str, Any]], usage: Usage) -> Any:
        """One tool-enabled chat completion; returns the assistant message (SDK object)."""
        try:
            response = self._request(messages, usage, tools=tools)
        except LLMUnsupported as err:
            raise LLMUnavailable(f"the endpoint refused tool calls: {err}") from None
        if not response.choices:
            raise LLMUnavailable("the endpoint returned no choices")
        return response.choices[0].message

    def _request(
        self,
        messages: list[Message],
        usage: Usage,
        max_tokens: int | None = None,
        **extra: Any,
    ) -> ChatCompletion:
        """POST with budget reservation, concurrency slot and backoff; accounts usage."""
        tools = extra.get("tools")
        chars = content_chars(messages) + (len(json.dumps(tools)) if tools else 0)
        limit = max_tokens or self.config.max_output_tokens
        reservation = self.budget.reserve(tokens_for_chars(chars), limit)
        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
            self._max_tokens_param: limit,
        }
        if self.config.seed is not None:
            kwargs["seed"] = self.config.seed
        for name in self._refused_params:
            kwargs.pop(name, None)
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        prompt = completion = 0
        try:
            response = self._with_backoff(kwargs, usage)
            if response.usage is not None:
                prompt = response.usage.prompt_tokens
                completion = response.usage.completion_tokens
            else:
                prompt = tokens_for_chars(chars)
                text = response.choices[0].message.content if response.choices else ""
                completion = estimate_tokens(text or "")
            usage.prompt_tokens += prompt
            usage.completion_tokens += completion
            usage.prompt_chars += chars
            usage.requests += 1
            return response
        finally:
            self.budget.settle(reservation, prompt, completion)

    def _with_backoff(self, kwargs: dict[str, Any], usage: Usage) -> ChatCompletion:
        attempt = 0
        while True:
            try:
                with self._slots:
                    raw = self._sdk.chat.completions.with_raw_response.create(**kwargs)
                    payload = raw.http_response.json()
                return chat_completion(payload, self.config.model)
            except (AnswerShapeError, ValueError) as err:
                raise AnswerUnusable(f"the endpoint's answer is unusable: {err}") from None
            except _UNSUPPORTED as err:
                if not self._adapt(kwargs, err):
                    raise LLMUnsupported(_describe(err)) from err
            except _RETRYABLE as err:
                if attempt >= self.config.max_retries:
                    raise LLMUnavailable(
                        f"{_describe(err)} (after {_attempts(attempt + 1)})"
                    ) from err
                self._sleep(self._delay(err, attempt))
                attempt += 1
                usage.retries += 1
            except openai.OpenAIError as err:
                raise LLMUnavailable(_describe(err)) from err

    def _adapt(self, kwargs: dict[str, Any], err: openai.APIStatusError) -> bool:
        """Drop or rename a parameter the model refuses (reasoning models refuse `max_tokens`
        and a non-default `temperature`); True when the request should be sent again."""
        message = str(err).lower()
        if not any(word in message for word in _REFUSAL_WORDS):
            return False
        if "max_tokens" in kwargs and "'max_tokens'" in message:
            kwargs["max_completion_tokens"] = kwargs.pop("max_tokens")
            self._max_tokens_param = "max_completion_tokens"
            return True
        for name in ("temperature", "seed"):
            if name in kwargs and f"'{name}'" in message:
                kwargs.pop(name)
                self._refused_params.add(name)
                return True
        return False

    def _delay(self, err: Exception, attempt: int) -> float:
        backoff = min(self.config.backoff_max_s, self.config.backoff_base_s * 2.0**attempt)
        if not isinstance(err, openai.APIStatusError):
            return backoff
        retry_after = _retry_after(err.response.headers)
        return backoff if retry_after is None else min(self.config.backoff_max_s, retry_after)


class AnswerUnusable(LLMUnavailable):
    """The endpoint answered, but not with an OpenAI-compatible document."""


class LLMUnsupported(Exception):
    """The endpoint answered 400/422: it does not support something the request used."""


def _json_schema_format(name: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": strict_schema(model), "strict": True},
    }


def _parse(content: str, model: type[T]) -> T:
    text = _strip_fences(content)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AnswerInvalid(f"not JSON ({err.msg} at line {err.lineno})") from err
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AnswerInvalid(f"does not match the schema ({where}: {first['msg']})") from err


def _strip_fences(content: str) -> str:
    """Models without JSON mode often wrap JSON in a ```json fence."""
    text = content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def _retry_after(headers: Any) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _describe(err: Exception) -> str:
    if isinstance(err, openai.APITimeoutError):
        return "timed out"
    if isinstance(err, openai.APIStatusError):
        return f"HTTP {err.status_code}"
    return type(err).__name__
