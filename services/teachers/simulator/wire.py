"""The two wire formats: OpenAI Chat Completions and Anthropic Messages, requests and bodies.

Only what the official SDKs send and read is modelled: `model`, `messages` (text content, as a
string or a list of text parts/blocks), the system prompt (OpenAI `system`/`developer` messages,
Anthropic top-level `system`), `max_tokens` / `max_completion_tokens`, and OpenAI's `n`.
Streaming is not simulated (400). Token counts are estimates: 4 characters per token, plus 4 per
message for the chat framing; what matters is that they are deterministic and plausible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Provider = Literal["openai", "anthropic"]

MAX_CHOICES = 16


class WireError(Exception):
    """A request the provider would reject with 400 (message is for the client)."""


@dataclass(slots=True)
class ChatRequest:
    provider: Provider
    model: str
    system: str
    last_user: str
    prompt_chars: int
    message_count: int
    max_tokens: int | None
    n: int


def estimate_tokens(chars: int) -> int:
    return (chars + 3) // 4


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    if content is None:
        return ""
    raise WireError(f"{where}: content must be a string or a list of text parts")


def _positive_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WireError(f"{name} must be a positive integer")
    return value


def _common(raw: bytes) -> tuple[dict[str, Any], str, list[Any]]:
    """The request body of either wire format, with its model and messages checked."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise WireError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise WireError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: a non-empty string is required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("messages: a non-empty list is required")
    if body.get("stream"):
        raise WireError("stream=true is not supported by the teacher simulator; call without streaming")
    return body, model, messages


def parse_openai(raw: bytes) -> ChatRequest:
    body, model, messages = _common(raw)
    system_parts: list[str] = []
    last_user = ""
    chars = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise WireError(f"messages[{i}] must be an object")
        text = _text_of(message.get("content"), f"messages[{i}]")
        chars += len(text)
        role = message.get("role")
        if role in ("system", "developer"):
            system_parts.append(text)
        elif role == "user":
            last_user = text
        elif role not in ("assistant", "tool", "function"):
            raise WireError(f"messages[{i}].role: unknown role {role!r}")
    max_tokens = _positive_int(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(body.get("max_tokens"), "max_tokens")
    n = _positive_int(body.get("n"), "n") or 1
    if n > MAX_CHOICES:
        raise WireError(f"n must be at most {MAX_CHOICES}")
    return ChatRequest(
        "openai", model, "\n".join(system_parts), last_user, chars, len(messages), max_tokens, n
    )


def parse_anthropic(raw: bytes) -> ChatRequest:
    body, model, messages = _common(raw)
    max_tokens = _positive_int(body.get("max_tokens"), "max_tokens")
    if max_tokens is None:
        raise WireError("max_tokens: Field required")
    system = _text_of(body.get("system"), "system")
    chars = len(system)
    last_user = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise WireError(f"messages.{i}.role: must be 'user' or 'assistant'")
        text = _text_of(message.get("content"), f"messages.{i}")
        chars += len(text)
        if message["role"] == "user":
            last_user = text
    return ChatRequest("anthropic", model, system, last_user, chars, len(messages), max_tokens, 1)


@dataclass(slots=True)
class Choice:
    text: str
    finish: str  # "stop" | "length" | "refusal"
    completion_tokens: int


_OPENAI_FINISH = {"stop": "stop", "length": "length", "refusal": "stop"}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "refusal": "refusal"}


def openai_body(
    response_id: str, created: int, model: str, choices: list[Choice], prompt_tokens: int
) -> bytes:
    """A chat.completion object. A refusal has `content: null` and the text in `refusal`."""
    out = []
    completion = 0
    for index, choice in enumerate(choices):
        refused = choice.finish == "refusal"
        out.append(
            {
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": None if refused else choice.text,
                    "refusal": choice.text if refused else None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": _OPENAI_FINISH[choice.finish],
            }
        )
        completion += choice.completion_tokens
    return orjson.dumps(
        {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            },
            "service_tier": "default",
            "system_fingerprint": "fp_kpdd_sim",
        }
    )


def anthropic_body(response_id: str, model: str, choice: Choice, prompt_tokens: int) -> bytes:
    """A Message object; a refusal has stop_reason `refusal`."""
    return orjson.dumps(
        {
            "id": response_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": choice.text}],
            "stop_reason": _ANTHROPIC_STOP[choice.finish],
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": choice.completion_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
    )


# Error types by HTTP status, as each provider names them.
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", "invalid_value"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    422: ("invalid_request_error", "unknown_problem"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    504: ("server_error", "timeout"),
}
_ANTHROPIC_ERRORS: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "api_error",
}


def error_body(provider: Provider, status: int, message: str, request_id: str, *, limit: str = "") -> bytes:
    """The provider's error body. `limit` ("requests"/"tokens") refines OpenAI's 429 type."""
    if provider == "anthropic":
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": _ANTHROPIC_ERRORS.get(status, "api_error"), "message": message},
                "request_id": request_id,
            }
        )
    err_type, code = _OPENAI_ERRORS.get(status, ("server_error", None))
    if status == 429 and limit:
        err_type = limit
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": None, "code": code}})
