"""Teachers reached with the `openai` SDK over Chat Completions: OpenAI itself, and any
OpenAI-compatible server (vLLM, TGI, hosted open models) at a base URL.

Keys: `openai` reads `OPENAI_API_KEY` (or `api_key_env`). An `openai-compatible` teacher sends
a key only when the spec names its variable with `api_key_env=...`: your OpenAI key is never
sent to a third-party server by default (servers without auth get a placeholder).

Samples: with a `seed` option, sample k is sent with `seed + k`, so repeated samples of one
prompt differ and each stays reproducible.
"""

from __future__ import annotations

from typing import Any, ClassVar

import openai
from openai.types.chat import ChatCompletion

from services.kpdd.parsing import normalise_finish_reason
from services.teachers.base import TeacherClient, TeacherRequest, TeacherResponse
from services.teachers.errors import TeacherCallError
from services.teachers.keys import DEFAULT_KEY_VARIABLES, read_key

NO_KEY_PLACEHOLDER = "no-key"


class OpenAIChatClient(TeacherClient):
    """OpenAI Chat Completions (`openai:MODEL[@BASE_URL]`)."""

    provider: ClassVar[str] = "openai"
    wire: ClassVar[str] = "openai"
    # OpenAI's current name for the output budget; compatible servers still read `max_tokens`.
    max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        key = self._api_key()
        self._keep_secret(key)
        self._sdk = openai.OpenAI(
            api_key=key, base_url=self._base_url(), max_retries=0, timeout=self.timeout_s
        )

    def _api_key(self) -> str:
        variable = self.spec.options.api_key_env or DEFAULT_KEY_VARIABLES["openai"]
        return read_key(variable, self.label)

    def _base_url(self) -> str | None:
        return self.spec.base_url

    def request_kwargs(self, request: TeacherRequest) -> dict[str, Any]:
        """The body fields sent for `request` (model, messages, options)."""
        options = dict(self.generation_options())
        max_tokens = options.pop("max_tokens")
        if "seed" in options:
            options["seed"] = int(options["seed"]) + request.sample_index
        return {
            "model": self.spec.model,
            "messages": request.prompt.openai_messages(),
            self.max_tokens_field: max_tokens,
            **options,
        }

    def complete(self, request: TeacherRequest) -> TeacherResponse:
        # The SDK's own `post` with its `ChatCompletion` type: same client, auth, errors and
        # timeouts as `chat.completions.create`, without re-validating a body we built and
        # typed ourselves (that transform cost more CPU than the rest of the call).
        completion = self._sdk.post(
            "/chat/completions", body=self.request_kwargs(request), cast_to=ChatCompletion
        )
        return self._normalise(completion)

    def response_from_body(self, body: dict[str, Any]) -> TeacherResponse:
        """The normalised response for a chat.completion body received another way (a batch's
        output line); the same reading as `complete`'s. Raises TeacherCallError (bad_response)
        for a body that is not a chat completion."""
        if not isinstance(body, dict):
            raise TeacherCallError("bad_response", "the response body is not a JSON object", body=body)
        try:  # built as the SDK builds a response (no validation), so both paths read alike
            return self._normalise(ChatCompletion.construct(**body))
        except (AttributeError, TypeError, KeyError) as exc:
            raise TeacherCallError("bad_response", f"not a chat completion: {exc}", body=body) from None

    @staticmethod
    def _normalise(completion: ChatCompletion) -> TeacherResponse:
        raw = completion.to_dict()
        if not completion.choices:
            raise TeacherCallError("bad_response", "the response has no choices", body=raw)
        choice = completion.choices[0]
        refusal = getattr(choice.message, "refusal", None)
        text = choice.message.content
        if refusal and not text:
            text = refusal  # kept so the record shows what the model said
        usage = completion.usage
        return TeacherResponse(
            text=text,
            finish_reason=normalise_finish_reason("openai", choice.finish_reason, refusal=bool(refusal)),
            tokens_in=usage.prompt_tokens if usage else None,
            tokens_out=usage.completion_tokens if usage else None,
            raw=raw,
        )

    def close(self) -> None:
        self._sdk.close()


class OpenAICompatibleClient(OpenAIChatClient):
    """Any server speaking Chat Completions (`openai-compatible:MODEL@BASE_URL`)."""

    provider: ClassVar[str] = "openai-compatible"
    max_tokens_field: ClassVar[str] = "max_tokens"

    def _api_key(self) -> str:
        if self.spec.options.api_key_env:
            return read_key(self.spec.options.api_key_env, self.label)
        return NO_KEY_PLACEHOLDER


__all__ = ["NO_KEY_PLACEHOLDER", "OpenAIChatClient", "OpenAICompatibleClient"]
