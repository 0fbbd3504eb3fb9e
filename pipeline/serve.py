"""``distill serve``: a run (a student, usually) over HTTP, a FastAPI app under uvicorn (``serve`` extra).

- ``POST /recommend`` with ``{"history": ["raw", ...], "k": 10}`` or ``{"user": "raw"}`` (and
  optionally ``"exclude_seen": false``) answers ``{"items": [{"item", "score", "title"}, ...],
  "unknown": [...], "popular": bool}``, as :meth:`pipeline.recommend.Recommender.recommend`.
- ``GET /health`` answers ``{"status": "ok", ...}`` with what is served.
- A request the server cannot use is a 4xx whose ``detail`` is one line: 422 for a body that is not
  JSON (or not UTF-8), misses or mixes ``user`` and ``history``, or asks for ``k``, a history or an id
  (over 256 characters) out of range; 413 for a body longer than the longest such history; 404 for
  a user the dataset does not have. Unknown item ids in a history are not an error: they are dropped
  and listed in ``unknown``.

Scoring runs on one worker thread beside the event loop (which keeps reading requests meanwhile), with
``threads`` torch threads: on a small shared CPU, threads scoring side by side only contend for the
same cores. Requests that arrive while a batch is being scored wait and are scored together in the
next one, up to ``max_batch`` histories (1: one request per call). Nothing waits for a batch to fill,
so a lone request is never delayed. ``bench/results/latency.md`` measures both settings.
"""

# No `from __future__ import annotations`: FastAPI reads the request model of a route defined in a
# function from its annotation, which must then be the class itself, not a string.

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from distill.errors import DistillError
from pipeline.config import ServeConfig
from pipeline.recommend import Recommender

MAX_ID = 256  # characters of one user or item id in a request


class Batcher:
    """Scores requests on one worker thread, together when they arrive while it is busy.

    Args:
        recommender: the loaded student.
        max_batch: the most histories one call scores.
    """

    def __init__(self, recommender: Recommender, max_batch: int = 1) -> None:
        self.recommender = recommender
        self.max_batch = max_batch
        self.pending: list[tuple[list, int, bool, asyncio.Future]] = []
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        self.drainer: asyncio.Task | None = None

    async def recommend(self, history: list, k: int, exclude_seen: bool) -> dict:
        """What :meth:`Recommender.recommend` answers for one history, as a dictionary."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((history, k, exclude_seen, future))
        if self.drainer is None or self.drainer.done():
            self.drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
            try:
                answers = await loop.run_in_executor(self.worker, self._score, batch)
            except Exception as e:  # handed to each waiting request, not swallowed
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (*_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    def _score(self, batch: list[tuple[list, int, bool, asyncio.Future]]) -> list[dict]:
        """One call per ``exclude_seen`` value, at the largest ``k`` asked; each answer cut to its ``k``."""
        answers: list[dict | None] = [None] * len(batch)
        for exclude in (True, False):
            rows = [i for i, (_, _, e, _) in enumerate(batch) if e == exclude]
            if not rows:
                continue
            k = max(batch[i][1] for i in rows)
            recs = self.recommender.recommend([batch[i][0] for i in rows], k, exclude).as_dicts()
            for i, answer in zip(rows, recs, strict=True):
                answers[i] = {**answer, "items": answer["items"][: batch[i][1]]}
        return answers


def _modules() -> tuple[Any, Any]:
    try:
        import fastapi
        import pydantic
    except ImportError:
        raise DistillError("serving needs the serve extra: pip install 'distill[serve]'") from None
    return fastapi, pydantic


def create_app(
    recommender: Recommender, max_k: int = 100, max_history: int = 2000, max_batch: int = 32
) -> Any:
    """The FastAPI app that serves ``recommender``.

    Args:
        recommender: the loaded student.
        max_k: the largest ``k`` a request may ask for (also at most the catalogue size).
        max_history: the longest history a request may send.
        max_batch: the most concurrent requests scored in one call (1: no batching).
    """
    fastapi, pydantic = _modules()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    k_limit = min(max_k, recommender.num_items)
    # The longest history of the longest ids, each character JSON-escaped (\uXXXX: 6 bytes) and quoted.
    max_body = 4096 + max_history * (6 * MAX_ID + 8)
    batcher = Batcher(recommender, max_batch)

    Id = Annotated[pydantic.StrictStr, pydantic.StringConstraints(max_length=MAX_ID)]

    class RecommendRequest(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")

        # Strict: JSON true is not the number 1 nor the id "1", and "5" is not the number 5.
        user: Id | pydantic.StrictInt | None = None
        history: list[Id | pydantic.StrictInt] | None = pydantic.Field(None, max_length=max_history)
        k: pydantic.StrictInt = pydantic.Field(10, ge=1, le=k_limit)
        exclude_seen: pydantic.StrictBool = True

        @pydantic.model_validator(mode="after")
        def one_of_user_and_history(self) -> "RecommendRequest":
            if (self.user is None) == (self.history is None):
                raise ValueError("give either 'user' or 'history', not both or neither")
            return self

    app = fastapi.FastAPI(title="distill student", version="1")

    app.add_middleware(BoundedBody, limit=max_body, response=JSONResponse)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not even decode (not UTF-8): as any non-JSON
            return JSONResponse(status_code=422, content={"detail": "the body is not JSON (in UTF-8)"})
        return JSONResponse(
            status_code=exc.status_code, content={"detail": exc.detail}, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Any, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        kind, loc = error.get("type"), tuple(error.get("loc", ()))
        if kind == "json_invalid":
            message = "the body is not JSON (in UTF-8)"
        elif loc == ("body",) and kind == "missing":
            message = 'the body is empty: send a JSON object, {"history": [...]} or {"user": "..."}'
        elif loc == ("body",) and "json" not in request.headers.get("content-type", ""):
            message = "the body is not read as JSON: send it with content-type application/json"
        else:
            where = ".".join(str(part) for part in loc if part != "body")
            message = str(error.get("msg", "invalid request")).removeprefix("Value error, ")
            message = f"{where}: {message}" if where else message
        return JSONResponse(status_code=422, content={"detail": message})

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "num_items": recommender.num_items,
            "max_len": recommender.max_len,
            "dataset": recommender.data.fingerprint,
            "max_k": k_limit,
            "max_history": max_history,
            "max_batch": max_batch,
        }

    @app.post("/recommend")
    async def recommend(request: RecommendRequest) -> dict:
        if request.user is not None:
            try:
                history = recommender.user_history(str(request.user))
            except DistillError as e:
                raise fastapi.HTTPException(status_code=404, detail=str(e)) from None
        else:
            history = request.history
        return await batcher.recommend(history, request.k, request.exclude_seen)

    return app


class BoundedBody:
    """Plain ASGI middleware (no per-request task, unlike ``@app.middleware``): a request whose
    ``Content-Length`` passes ``limit`` is answered 413 before its body is read; a body sent without
    one (chunked) is read up to ``limit`` bytes, answered 413 as soon as it passes, and otherwise handed
    on whole."""

    def __init__(self, app: Any, limit: int, response: Any) -> None:
        self.app, self.limit, self.response = app, limit, response

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.limit:
                detail = f"the request body has {int(length):,} bytes; at most {self.limit:,} are read"
                await self.response(status_code=413, content={"detail": detail})(scope, receive, send)
                return
            if length is None:
                messages, size = [], 0
                while True:
                    message = await receive()
                    messages.append(message)
                    if message["type"] != "http.request":  # the client left
                        break
                    size += len(message.get("body", b""))
                    if size > self.limit:
                        detail = f"the request body passes {self.limit:,} bytes, the most that are read"
                        await self.response(status_code=413, content={"detail": detail})(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        break
                receive = _replay(messages, receive)
        await self.app(scope, receive, send)


def _replay(messages: list, receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``messages`` first, then what ``receive`` gives."""
    pending = iter(messages)

    async def replayed() -> dict:
        return next(pending, None) or await receive()

    return replayed


def run(cfg: ServeConfig) -> None:
    """Load ``cfg.run`` and serve it until interrupted."""
    _modules()
    try:
        import uvicorn
    except ImportError:
        raise DistillError("serving needs the serve extra: pip install 'distill[serve]'") from None
    import torch

    torch.set_num_threads(cfg.threads)
    check_address(cfg.host, cfg.port)  # before the model loads, in distill's one line
    recommender = Recommender.load(cfg.run, cfg.data, cfg.device, cfg.index)
    app = create_app(recommender, cfg.max_k, cfg.max_history, cfg.max_batch)
    # uvicorn says where it listens; one log line per request would cost more than scoring one.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", access_log=False)


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, an address this process cannot listen on (a port in use, an unknown host)."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as e:
        raise DistillError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
