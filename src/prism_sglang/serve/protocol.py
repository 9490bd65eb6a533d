"""Request and response bodies: OpenAI's shapes for /v1/*, SGLang 0.5.17's for the native /generate.

Requests are validated strictly (a string is not a number, a float is not an int) so that a wrong type is a 400,
not a silent coercion. Unknown fields are ignored, as OpenAI and SGLang do: clients send many optional fields
(`user`, `presence_penalty: 0`, ...) that do not change what this server computes. Fields that would change
the answer but are not implemented (`tools`, `tool_choice`, `response_format`) are refused with a 400 naming the
field when they ask for something, accepted when they ask for nothing.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator

INT64_MAX = 2**63 - 1
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
StopString = Annotated[str, Field(min_length=1)]
Stop = StopString | Annotated[list[StopString], Field(max_length=16)] | None
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]
Seed = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]


def _only_one_choice(n: int) -> int:
    if n != 1:
        raise ValueError(f"only n = 1 is supported, got {n}")
    return n


OneChoice = Annotated[int, AfterValidator(_only_one_choice), Field(description="only 1 is supported")]

# Values of the fields below that ask for nothing (clients send them by default).
_OFF_VALUES = (None, False, 0, "none", [], {"type": "text"})


def unsupported(feature: str) -> Any:
    """A request field this server does not implement: any value that asks for it is a 400 naming the field,
    never silently ignored (the client would believe it got, say, JSON mode)."""
    def reject(value: Any) -> None:
        if value not in _OFF_VALUES:
            raise ValueError(f"{feature} is not supported by this server")

    return Annotated[Any, AfterValidator(reject), Field(description=f"{feature}: not supported")]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(Request):
    include_usage: bool = False


class SamplingFields(Request):
    """Sampling fields shared by the OpenAI endpoints (OpenAI names plus SGLang's extensions)."""

    temperature: float = Field(1.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=INT64_MAX, description="-1 or 0: no top-k truncation (SGLang extension)")
    stop: Stop = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None
    seed: Seed | None = None
    ignore_eos: bool = False
    n: OneChoice = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX, description="default: the rest of the context")
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX, description="OpenAI's newer max_tokens")
    return_meta_info: bool = Field(False, description="SGLang extension: add `meta_info` to the choice")
    tools: unsupported("tool calling") = None
    tool_choice: unsupported("tool calling") = None
    response_format: unsupported("a response format other than text (JSON mode, JSON schema)") = None
    logprobs: bool = Field(False, description="return each output token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token")

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: str | Annotated[list[TokenId], Field(min_length=1)]
    max_tokens: int | None = Field(16, ge=1, le=INT64_MAX, description="null: the rest of the context")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="return each token's log-probability and this many alternatives")

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def logprobs_count(self) -> int | None:
        return self.logprobs


class GenerateSamplingParams(Request):
    """SGLang's `sampling_params` (the subset this engine implements; other fields are ignored)."""

    max_new_tokens: int | None = Field(128, ge=1, le=INT64_MAX, description="null: the rest of the context")
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=INT64_MAX)
    stop: Stop = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None
    ignore_eos: bool = False
    sampling_seed: Seed | None = None
    n: OneChoice = 1


class GenerateRequest(Request):
    """SGLang's native POST /generate body: exactly one of `text` and `input_ids`."""

    text: str | None = None
    input_ids: Annotated[list[TokenId], Field(min_length=1)] | None = None
    sampling_params: GenerateSamplingParams = Field(default_factory=GenerateSamplingParams)
    stream: bool = False
    rid: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'text' and 'input_ids'")
        return self


# -- responses ----------------------------------------------------------------------------------------------


class Usage(BaseModel):
    """OpenAI usage plus, for speculative requests, SGLang's per-request `meta_info` spec_* figures."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    spec_verify_ct: int | None = None
    spec_accept_length: float | None = None
    spec_accept_rate: float | None = None
    spec_num_correct_drafts: int | None = None
    spec_num_proposed_drafts: int | None = None
    spec_correct_drafts_histogram: list[int] | None = None

    @model_serializer(mode="wrap")
    def _drop_absent_spec_fields(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length", "abort"] | None
    matched_stop: int | str | None = None
    meta_info: dict[str, Any] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length", "abort"] | None
    matched_stop: int | str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class GenerateResponse(BaseModel):
    """SGLang's /generate output: cumulative `text` and `output_ids` (in streams too), and `meta_info`."""

    text: str
    output_ids: list[int]
    meta_info: dict[str, Any]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "prism-sglang"
    root: str
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
