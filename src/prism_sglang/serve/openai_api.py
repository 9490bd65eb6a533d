"""OpenAI-compatible endpoints: /v1/chat/completions, /v1/completions, /v1/models.

Streams follow OpenAI: a first chunk with the assistant role (chat), text deltas, a chunk with `finish_reason`,
a usage chunk (`choices: []`) when `stream_options.include_usage`, then `data: [DONE]`. A request that fails
mid-stream (timeout, crash, shutdown) ends with an `error` event, as SGLang does, then `[DONE]`.
Usage carries SGLang's spec_* per-request figures when the request was speculative.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from prism_sglang.engine import Generation
from prism_sglang.engine.loading import encode_chat
from prism_sglang.engine.sampling import TokenLogprob
from prism_sglang.serve.errors import ServeError, bad_request
from prism_sglang.serve.native_api import meta_info
from prism_sglang.serve.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    ResponseMessage,
    Usage,
)
from prism_sglang.serve.service import (
    ERRORS,
    SSE_DONE,
    Call,
    ClientGone,
    Sampling,
    Service,
    ServiceDep,
    sse,
    sse_response,
)
from prism_sglang.serve.streaming import TextStream

router = APIRouter()


# Like SGLang's server, the completion endpoints take any `model` and echo it (one model is served; clients often
# send "default" or their own label); only GET /v1/models/{model} answers 404 for a name that is not served.


def model_card(svc: Service) -> ModelCard:
    name = svc.config.served_model_name
    return ModelCard(id=name, created=int(svc.started), root=name, max_model_len=svc.context_length)


@router.get("/v1/models", response_model=ModelList)
async def list_models(svc: ServiceDep) -> ModelList:
    return ModelList(data=[model_card(svc)])


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=ERRORS)
async def retrieve_model(model: str, svc: ServiceDep) -> ModelCard:
    svc.check_model(model)
    return model_card(svc)


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_new_tokens: int | None) -> Sampling:
    return Sampling(max_new_tokens, body.temperature, body.top_p, body.top_k, body.stop, body.stop_token_ids,
                    body.ignore_eos, body.seed, body.logprobs_count)


# -- logprobs (the engine records them per output token; see engine.sampling.token_logprob) --------------------
def _token(svc: Service, token_id: int) -> str:
    return svc.tokenizer.decode([token_id])


def chat_logprobs(svc: Service, entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = _token(svc, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in entries]}


def completion_logprobs(svc: Service, entries: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completions `logprobs`: parallel lists; `text_offset` counts from the completion's start
    (`offset`: the text already sent in earlier stream chunks)."""
    tokens = [_token(svc, e.token) for e in entries]
    offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{_token(svc, t): lp for t, lp in e.top} for e in entries], "text_offset": offsets}


def _usage(svc: Service, call: Call, generation: Generation) -> Usage:
    prompt, completion = len(call.job.prompt_ids), len(generation.output_ids)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 **svc.spec_meta_info(generation))


def _matched_stop(generation: Generation) -> int | str | None:
    return generation.matched_stop if generation.finish_reason == "stop" else None


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request, svc: ServiceDep) -> Response:
    try:
        prompt = encode_chat(svc.tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages])
    except Exception as e:  # the chat template may reject a conversation (e.g. a role order it does not allow)
        raise bad_request(f"the chat template could not render the messages: {e}", "messages") from e
    max_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    params = svc.sampling_params(len(prompt), _sampling(body, body.max_new_tokens), "messages", max_param)
    call = svc.submit("chat", "chatcmpl-", prompt, params)
    created, model = int(time.time()), body.model or svc.config.served_model_name

    def chunk(delta: dict[str, Any], finish: str | None = None, matched: int | str | None = None,
              logprobs: Sequence[TokenLogprob] | None = None) -> dict:
        return {"id": call.id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta,
                             "logprobs": None if logprobs is None else chat_logprobs(svc, logprobs),
                             "finish_reason": finish, "matched_stop": matched}]}

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return sse_response(_text_stream(
            svc, call, include_usage, first=chunk({"role": "assistant", "content": ""}),
            piece=lambda text, lp: chunk({"content": text}, logprobs=lp),
            last=lambda g, lp: chunk({}, g.finish_reason, _matched_stop(g), lp),
            usage=lambda g: {**chunk({}), "choices": [], "usage": _usage(svc, call, g).model_dump()},
        ))

    def render(g: Generation) -> dict:
        choice = ChatChoice(message=ResponseMessage(content=g.text), finish_reason=g.finish_reason,
                            matched_stop=_matched_stop(g),
                            logprobs=None if g.logprobs is None else chat_logprobs(svc, g.logprobs),
                            meta_info=meta_info(svc, call, g.output_ids, g) if body.return_meta_info else None)
        response = ChatCompletionResponse(id=call.id, created=created, model=model, choices=[choice],
                                          usage=_usage(svc, call, g)).model_dump()
        if not body.return_meta_info:  # SGLang leaves the key out unless asked for it
            del response["choices"][0]["meta_info"]
        return response

    return await _complete(svc, call, request, render)


@router.post("/v1/completions", response_model=CompletionResponse, responses=ERRORS)
async def completions(body: CompletionRequest, request: Request, svc: ServiceDep) -> Response:
    if isinstance(body.prompt, str):
        prompt = svc.tokenizer.encode(body.prompt)
    else:
        svc.check_token_ids(body.prompt, "prompt")
        prompt = list(body.prompt)
    params = svc.sampling_params(len(prompt), _sampling(body, body.max_new_tokens), "prompt", "max_tokens")
    call = svc.submit("completions", "cmpl-", prompt, params)
    created, model = int(time.time()), body.model or svc.config.served_model_name

    sent = [0]  # characters of text streamed so far: where the next chunk's text_offset starts

    def chunk(text: str, finish: str | None = None, matched: int | str | None = None,
              logprobs: Sequence[TokenLogprob] | None = None) -> dict:
        payload = None if logprobs is None else completion_logprobs(svc, logprobs, sent[0])
        sent[0] += len(text)
        return {"id": call.id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": payload, "finish_reason": finish,
                             "matched_stop": matched}]}

    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return sse_response(_text_stream(
            svc, call, include_usage, first=None, piece=lambda text, lp: chunk(text, logprobs=lp),
            last=lambda g, lp: chunk("", g.finish_reason, _matched_stop(g), lp),
            usage=lambda g: {**chunk(""), "choices": [], "usage": _usage(svc, call, g).model_dump()},
        ))

    def render(g: Generation) -> dict:
        choice = CompletionChoice(text=g.text, finish_reason=g.finish_reason, matched_stop=_matched_stop(g),
                                  logprobs=None if g.logprobs is None else completion_logprobs(svc, g.logprobs))
        return CompletionResponse(id=call.id, created=created, model=model, choices=[choice],
                                  usage=_usage(svc, call, g)).model_dump()

    return await _complete(svc, call, request, render)


async def _complete(svc: Service, call: Call, request: Request, render: Callable[[Generation], dict]) -> Response:
    """Non-streaming: wait for the job (cancelling it if the client leaves), then answer in one body."""
    try:
        return JSONResponse(render(await svc.wait(call, request)))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
    finally:
        svc.close(call)


Logprobs = Sequence[TokenLogprob] | None


async def _text_stream(svc: Service, call: Call, include_usage: bool, first: dict | None,
                       piece: Callable[[str, Logprobs], dict], last: Callable[[Generation, Logprobs], dict],
                       usage: Callable[[Generation], dict]) -> AsyncIterator[str]:
    """OpenAI's SSE sequence. A client that disconnects cancels this generator; `close` then drops the job.
    With logprobs, each chunk carries those of the tokens produced since the previous chunk (text and tokens
    need not line up: a token's text may still be held back), the last chunk the rest: together, all."""
    text = TextStream(svc.tokenizer, call.job.params.stop)
    logged = [0]  # output tokens whose logprobs were sent

    def new_logprobs(upto: int) -> Logprobs:
        entries = call.job.generation.logprobs
        if entries is None:
            return None
        fresh, logged[0] = entries[logged[0]:upto], upto
        return fresh

    try:
        if first is not None:
            yield sse(first)
        async for update in svc.updates(call):
            try:
                generation = svc.outcome(call, update)
            except ServeError as e:
                yield sse(e.body())
                break
            delta = text.final(generation.text) if generation is not None else text.delta(update.output_ids)
            if delta and generation is None:
                yield sse(piece(delta, new_logprobs(len(update.output_ids))))
            elif delta:
                yield sse(piece(delta, None))
            if generation is not None:
                yield sse(last(generation, new_logprobs(len(generation.output_ids))))
                if include_usage:
                    yield sse(usage(generation))
        yield SSE_DONE
    finally:
        svc.close(call)
