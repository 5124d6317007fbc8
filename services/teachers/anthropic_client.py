"""Anthropic teachers through the `anthropic` SDK's Messages API (`anthropic:MODEL[@BASE_URL]`).

The rendered prompt's system text goes in the top-level `system` parameter and its turns in
`messages`; the reply's text blocks are joined. The key comes from `ANTHROPIC_API_KEY` (or the
variable named by `api_key_env`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import anthropic
from anthropic.types import Message, TextBlock

from services.kpdd.parsing import normalise_finish_reason
from services.teachers.base import TeacherClient, TeacherRequest, TeacherResponse
from services.teachers.errors import TeacherCallError
from services.teachers.keys import DEFAULT_KEY_VARIABLES, read_key


class AnthropicMessagesClient(TeacherClient):
    provider: ClassVar[str] = "anthropic"
    wire: ClassVar[str] = "anthropic"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        variable = self.spec.options.api_key_env or DEFAULT_KEY_VARIABLES["anthropic"]
        key = read_key(variable, self.label)
        self._keep_secret(key)
        self._sdk = anthropic.Anthropic(
            api_key=key, base_url=self.spec.base_url, max_retries=0, timeout=self.timeout_s
        )

    def request_kwargs(self, request: TeacherRequest) -> dict[str, Any]:
        """The body fields sent for `request` (model, system, messages, options)."""
        prompt = request.prompt
        return {
            "model": self.spec.model,
            "system": prompt.system,
            "messages": [{"role": m["role"], "content": m["content"]} for m in prompt.messages],
            **self.generation_options(),
        }

    def complete(self, request: TeacherRequest) -> TeacherResponse:
        # The SDK's own `post` with its `Message` type (see OpenAIChatClient.complete for why).
        message = self._sdk.post("/v1/messages", body=self.request_kwargs(request), cast_to=Message)
        return self._normalise(message)

    def response_from_body(self, body: dict[str, Any]) -> TeacherResponse:
        """The normalised response for a Message body received another way (a batch's result
        line); the same reading as `complete`'s. Raises TeacherCallError (bad_response) for a
        body that is not a message."""
        if not isinstance(body, dict):
            raise TeacherCallError("bad_response", "the response body is not a JSON object", body=body)
        try:  # built as the SDK builds a response (no validation), so both paths read alike
            return self._normalise(Message.construct(**body))
        except (AttributeError, TypeError, KeyError) as exc:
            raise TeacherCallError("bad_response", f"not a message: {exc}", body=body) from None

    @staticmethod
    def _normalise(message: Message) -> TeacherResponse:
        texts = [block.text for block in message.content if isinstance(block, TextBlock)]
        usage = message.usage
        return TeacherResponse(
            text="".join(texts) if texts else None,
            finish_reason=normalise_finish_reason("anthropic", message.stop_reason),
            tokens_in=usage.input_tokens if usage else None,
            tokens_out=usage.output_tokens if usage else None,
            raw=message.to_dict(),
        )

    def close(self) -> None:
        self._sdk.close()


__all__ = ["AnthropicMessagesClient"]
