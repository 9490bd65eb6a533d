"""SGLang's native endpoints, in SGLang 0.5.17's shapes: /generate, /health, /server_info, /model_info, /metrics.

`/generate` streams SGLang's default (non-incremental) format: every `data:` event carries the cumulative `text`
and `output_ids` and a `meta_info` whose `completion_tokens` counts everything so far; the last one adds
`finish_reason` ({"type": "stop", "matched": ...} or {"type": "length", "length": ...}), `e2e_latency` and the
spec_* figures; then `data: [DONE]`. sglang.benchmark.serving --backend sglang reads exactly these fields.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from prism_sglang.engine import Generation
from prism_sglang.serve.errors import ServeError
from prism_sglang.serve.metrics import Metrics
from prism_sglang.serve.protocol import GenerateRequest, GenerateResponse
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


def finish_reason_json(generation: Generation) -> dict[str, Any]:
    """SGLang's meta_info.finish_reason (BaseFinishReason.to_json)."""
    if generation.finish_reason == "length":
        return {"type": "length", "length": len(generation.output_ids)}
    return {"type": "stop", "matched": generation.matched_stop}


def meta_info(svc: Service, call: Call, output_ids: tuple[int, ...] | list[int],
              generation: Generation | None = None) -> dict[str, Any]:
    """SGLang's meta_info; `generation` (finished) adds the final fields."""
    info: dict[str, Any] = {
        "id": call.id, "finish_reason": None, "prompt_tokens": len(call.job.prompt_ids),
        "completion_tokens": len(output_ids), "cached_tokens": 0,
    }
    if generation is not None:
        info["finish_reason"] = finish_reason_json(generation)
        info["e2e_latency"] = time.perf_counter() - call.start
        info.update(svc.spec_meta_info(generation))
    return info


@router.get("/health")
@router.get("/health_generate", include_in_schema=False)
async def health(svc: ServiceDep) -> Response:
    """200 while the server accepts requests; 503 once it is shutting down."""
    return Response(status_code=200 if svc.scheduler.accepting else 503)


@router.get("/server_info")
@router.get("/get_server_info", include_in_schema=False)
async def server_info(svc: ServiceDep) -> dict[str, Any]:
    return svc.server_info()


@router.get("/model_info")
@router.get("/get_model_info", include_in_schema=False)
async def model_info(svc: ServiceDep) -> dict[str, Any]:
    config = svc.engine.target.config
    return {
        "model_path": str(svc.config.target_path), "tokenizer_path": str(svc.config.target_path),
        "is_generation": True, "preferred_sampling_params": None, "weight_version": "default",
        "has_image_understanding": False, "has_audio_understanding": False,
        "model_type": getattr(config, "model_type", None), "architectures": getattr(config, "architectures", None),
    }


@router.post("/flush_cache")
@router.get("/flush_cache", include_in_schema=False)
async def flush_cache() -> Response:
    """SGLang's cache flush (sglang.benchmark.serving --flush-cache calls it): no prefix cache here to flush."""
    return Response("Cache flushed.\n", status_code=200)


@router.get("/metrics")
async def metrics(svc: ServiceDep) -> Response:
    return Response(svc.metrics.exposition(), media_type=Metrics.CONTENT_TYPE)


@router.post("/generate", response_model=GenerateResponse, responses=ERRORS)
async def generate(body: GenerateRequest, request: Request, svc: ServiceDep) -> Response:
    """SGLang's native generation API (single request; `text` or `input_ids`)."""
    if body.input_ids is not None:
        svc.check_token_ids(body.input_ids, "input_ids")
        prompt = list(body.input_ids)
    else:
        prompt = svc.tokenizer.encode(body.text)
    s = body.sampling_params
    params = svc.sampling_params(
        len(prompt), Sampling(s.max_new_tokens, s.temperature, s.top_p, s.top_k, s.stop, s.stop_token_ids,
                              s.ignore_eos, s.sampling_seed),
        "text" if body.text is not None else "input_ids", "sampling_params.max_new_tokens")
    call = svc.submit("generate", "", prompt, params, body.rid or uuid.uuid4().hex)
    if body.stream:
        return sse_response(_generate_stream(svc, call))
    try:
        generation = await svc.wait(call, request)
        return JSONResponse(GenerateResponse(text=generation.text, output_ids=list(generation.output_ids),
                                             meta_info=meta_info(svc, call, generation.output_ids, generation))
                            .model_dump())
    except ClientGone:
        return Response(status_code=499)
    finally:
        svc.close(call)


async def _generate_stream(svc: Service, call: Call) -> AsyncIterator[str]:
    text = TextStream(svc.tokenizer, call.job.params.stop)
    try:
        async for update in svc.updates(call):
            try:
                generation = svc.outcome(call, update)
            except ServeError as e:
                yield sse(e.body())
                break
            if generation is not None:
                text.final(generation.text)
            else:
                text.delta(update.output_ids)
            yield sse({"text": text.sent, "output_ids": list(update.output_ids),
                       "meta_info": meta_info(svc, call, update.output_ids, generation)})
        yield SSE_DONE
    finally:
        svc.close(call)
