"""The CPU OpenAI-compatible server over the reference engine (`prism-sglang serve`; DESIGN §5).

Modules: options (flags, ServerConfig), server (model resolution, uvicorn), app (FastAPI app), scheduler (the
engine worker thread), service (per-request plumbing), openai_api / native_api (endpoints), protocol (bodies),
streaming (incremental text), metrics (Prometheus), errors (OpenAI error bodies). Nothing here imports sglang.
"""
