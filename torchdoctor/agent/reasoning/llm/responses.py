"""Every answer from an OpenAI-compatible endpoint is validated here before anything reads it.

The SDK builds its response objects without validation, so an endpoint that answers with an
odd shape (`"data": null` from `GET /models`, `"choices": null`, content as a list of parts,
usage with null counts) would surface as a `TypeError` deep in the audit. These models accept
the known variations, normalise them to the SDK's types, and reject the rest with a one-line
reason (`AnswerShapeError`), which the client turns into "the LLM is unavailable".
"""

from __future__ import annotations

from typing import Any, get_args

from openai.types.chat import ChatCompletion
from openai.types.chat.chat_completion import Choice
from pydantic import BaseModel, ConfigDict, ValidationError

FINISH_REASONS = frozenset(get_args(Choice.model_fields["finish_reason"].annotation))
CONTEXT_KEYS = (
    "max_model_len",
    "context_length",
    "context_window",
    "max_context_length",
    "n_ctx_train",
    "n_ctx",
)


class AnswerShapeError(ValueError):
    """The endpoint's answer is not an OpenAI-compatible document."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Loose):
    type: str = "text"
    text: str = ""


class AnswerMessage(_Loose):
    role: str = "assistant"
    content: str | list[ContentPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content if part.type == "text")
        return self.content


class AnswerChoice(_Loose):
    index: int = 0
    message: AnswerMessage
    finish_reason: str | None = None


class AnswerUsage(_Loose):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatAnswer(_Loose):
    id: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[AnswerChoice]
    usage: AnswerUsage | None = None


class ModelEntry(_Loose):
    id: str


class ModelList(_Loose):
    data: list[ModelEntry]


def _short(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the document"
    return f"{where}: {first['msg']}"


def chat_completion(payload: Any, model: str) -> ChatCompletion:
    """A chat completion document, validated and normalised to the SDK's type."""
    try:
        answer = ChatAnswer.model_validate(payload)
    except ValidationError as err:
        raise AnswerShapeError(f"unexpected chat completion ({_short(err)})") from None
    choices = []
    for choice in answer.choices:
        message: dict[str, Any] = {"role": "assistant", "content": choice.message.text()}
        if choice.message.tool_calls:
            message["tool_calls"] = choice.message.tool_calls
        reason = choice.finish_reason if choice.finish_reason in FINISH_REASONS else "stop"
        choices.append({"index": choice.index, "message": message, "finish_reason": reason})
    usage = answer.usage
    counted = usage is not None and None not in (usage.prompt_tokens, usage.completion_tokens)
    document: dict[str, Any] = {
        "id": answer.id or "",
        "object": "chat.completion",
        "created": answer.created or 0,
        "model": answer.model or model,
        "choices": choices,
    }
    if counted and usage is not None:
        prompt, completion = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
        document["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    try:
        return ChatCompletion.model_validate(document)
    except ValidationError as err:
        raise AnswerShapeError(f"unexpected chat completion ({_short(err)})") from None


def context_tokens(payload: Any, model: str) -> int | None:
    """The model's context length from a `GET /models` document; None when it does not say
    (or says it in a shape nobody documented)."""
    try:
        listing = ModelList.model_validate(payload)
    except ValidationError:
        return None
    for entry in listing.data:
        if entry.id != model:
            continue
        data = entry.model_dump()
        meta = data.get("meta")
        for source in (data, meta if isinstance(meta, dict) else {}):
            for key in CONTEXT_KEYS:
                value = source.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
    return None
