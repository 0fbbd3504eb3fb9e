"""``distill serve``: a student behind HTTP, a FastAPI app under uvicorn (the ``serve`` extra).

- ``POST /recommend`` with ``{"history": ["raw", ...], "k": 10}`` or ``{"user": "raw"}`` (and
  optionally ``"exclude_seen": false``) answers ``{"items": [{"item", "score", "title"}, ...],
  "unknown": [...], "popular": bool}``, as :meth:`student.recommend.Recommender.recommend`.
- ``GET /health`` answers ``{"status": "ok", ...}`` with what is served.
- A request the server cannot use is a 4xx whose ``detail`` is one line: 422 for a body that is not
  JSON, misses or mixes ``user`` and ``history``, or asks for ``k`` or a history out of range; 404 for
  a user the dataset does not have. Unknown item ids in a history are not an error: they are dropped
  and listed in ``unknown``.

One request is scored at a time, on the event loop: on a small CPU the model is the bottleneck and
threads scoring side by side only contend for the same cores. Concurrent requests are not batched:
see ``bench/results/latency.md`` for the measurement behind that.
"""

# No `from __future__ import annotations`: FastAPI reads the request model of a route defined in a
# function from its annotation, which must then be the class itself, not a string.

from typing import Any

from distill.errors import DistillError
from student.config import ServeConfig
from student.recommend import Recommender


def _modules() -> tuple[Any, Any]:
    try:
        import fastapi
        import pydantic
    except ImportError:
        raise DistillError("serving needs the serve extra: pip install 'distill[serve]'") from None
    return fastapi, pydantic


def create_app(recommender: Recommender, max_k: int = 100, max_history: int = 2000) -> Any:
    """The FastAPI app that serves ``recommender``.

    Args:
        recommender: the loaded student.
        max_k: the largest ``k`` a request may ask for (also at most the catalogue size).
        max_history: the longest history a request may send.
    """
    fastapi, pydantic = _modules()
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    k_limit = min(max_k, recommender.num_items)

    class RecommendRequest(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")

        user: str | int | None = None
        history: list[str | int] | None = pydantic.Field(None, max_length=max_history)
        k: int = pydantic.Field(10, ge=1, le=k_limit)
        exclude_seen: bool = True

        @pydantic.model_validator(mode="after")
        def one_of_user_and_history(self) -> "RecommendRequest":
            if (self.user is None) == (self.history is None):
                raise ValueError("give either 'user' or 'history', not both or neither")
            return self

    app = fastapi.FastAPI(title="distill student", version="1")

    @app.exception_handler(RequestValidationError)
    async def one_line(request: Any, exc: RequestValidationError) -> JSONResponse:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = str(error.get("msg", "invalid request")).removeprefix("Value error, ")
        return JSONResponse(status_code=422, content={"detail": f"{where}: {message}" if where else message})

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "num_items": recommender.num_items,
            "max_len": recommender.max_len,
            "dataset": recommender.data.fingerprint,
            "max_k": k_limit,
            "max_history": max_history,
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
        return recommender.recommend([history], request.k, request.exclude_seen).as_dicts()[0]

    return app


def run(cfg: ServeConfig) -> None:
    """Load ``cfg.run`` and serve it until interrupted."""
    _modules()
    try:
        import uvicorn
    except ImportError:
        raise DistillError("serving needs the serve extra: pip install 'distill[serve]'") from None
    recommender = Recommender.load(cfg.run, cfg.data, cfg.device)
    uvicorn.run(
        create_app(recommender, cfg.max_k, cfg.max_history), host=cfg.host, port=cfg.port, log_level="warning"
    )
