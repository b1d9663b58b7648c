"""The one HTTP service: models' predict routes, RAG routes, `/health`, `/metrics`, OpenAPI at `/docs`.

`POST /v1/models/{name}/predict` takes `{"inputs": [...]}`, each input what `Predictor.predict`
reads, and answers `{"outputs": [...]}`, each output the dict `predict` gives for it (the lines the
CLI `predict` prints). Requests are checked before they reach a model (`Guard` for the body,
`check_inputs` for the inputs), so a bad one gets 404, 413 or 422 with a message, never 500.
"""

# No `from __future__ import annotations`: FastAPI evaluates route annotations, which name local dependencies.

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from nlptasks.errors import UserInputError, did_you_mean
from nlptasks.serve.batching import Batcher, Closed
from nlptasks.serve.guard import Guard, ServiceState
from nlptasks.serve.inputs import TooLarge, check_inputs
from nlptasks.serve.metrics import Metrics
from nlptasks.serve.rag import add_rag_routes, describe
from nlptasks.serve.settings import ServeSettings
from nlptasks.serve.sources import Sources, is_index, open_sources

DESCRIPTION = """Trained nlptasks runs and RAG indexes over HTTP.

`POST /v1/models/{name}/predict` with `{"inputs": [...]}` answers `{"outputs": [...]}`, one prediction
per input as `nlptasks predict` prints it. Concurrent requests to a model share its forward passes.
Bodies, inputs per request and characters per input are bounded (413 / 422 with a message).
"""


class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": ["A triumph."]}, {"inputs": [{"question": "Who?", "context": "Ada."}]}]
        },
    )
    inputs: list[Any] = Field(
        description="Texts, or for multi-field tasks (QA) objects such as {'question': ..., 'context': ...}"
    )


class PredictResponse(BaseModel):
    outputs: list[dict[str, Any]] = Field(description="One prediction per input, in input order, as `predict` gives it")


@dataclass
class ServedModel:
    name: str
    predictor: Any
    batcher: Batcher

    def describe(self) -> dict[str, Any]:
        """What `/v1/models` lists: what a client needs to build inputs and read outputs."""
        predictor, task = self.predictor, self.predictor.task
        recipe = predictor.recipe
        labels = [predictor.id2label[i] for i in sorted(predictor.id2label)] if task.integer_labels else None
        return {
            "name": self.name,
            "task": recipe.task,
            "path": str(predictor.run_dir.root),
            "model": recipe.model,
            "method": recipe.method,
            "input_fields": list(task.input_fields),
            "labels": labels,
            "adapters": predictor.adapters,
        }


def create_app(
    sources: Sources, settings: ServeSettings | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> FastAPI:
    """The app for `sources` (paths, `NAME=PATH` specs, or a mapping of names to paths or opened sources),
    opened with `overrides` (`open_sources`)."""
    settings = settings or ServeSettings()
    opened = open_sources(sources, settings.max_batch_size, overrides)
    indexes = {name: source for name, source in opened.items() if is_index(source)}
    metrics = Metrics()
    models = {name: _served(name, source, settings, metrics) for name, source in opened.items() if name not in indexes}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        for model in models.values():  # after uvicorn's drain: nothing is waiting any more
            await model.batcher.close()

    app = FastAPI(title="nlptasks", version="1", lifespan=lifespan, description=DESCRIPTION)
    app.state.service = ServiceState()
    app.state.models = models
    app.add_middleware(
        Guard, max_body_bytes=settings.max_body_bytes, state=app.state.service, metrics=metrics, names=set(opened)
    )
    _add_error_handlers(app)
    _add_model_routes(app, models, settings)
    add_rag_routes(app, indexes)
    _add_service_routes(app, models, indexes, metrics)
    return app


def _served(name: str, predictor: Any, settings: ServeSettings, metrics: Metrics) -> ServedModel:
    batcher = Batcher(
        predictor.predict, settings.max_batch_size, settings.max_wait_ms, name, metrics.batch_observer(name)
    )
    metrics.watch_queue(name, lambda: batcher.queued)
    return ServedModel(name, predictor, batcher)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserInputError)
    async def bad_input(request: Request, err: UserInputError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=413 if isinstance(err, TooLarge) else 422)

    @app.exception_handler(Closed)
    async def closed(request: Request, err: Closed) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503)


def _add_model_routes(app: FastAPI, models: dict[str, ServedModel], settings: ServeSettings) -> None:
    async def model_named(name: str) -> ServedModel:  # async: FastAPI runs a plain function in a worker thread
        if name not in models:
            served = ", ".join(models) or "none"
            raise HTTPException(404, f"no model '{name}'{did_you_mean(name, models)}; served: {served}")
        return models[name]

    @app.get("/v1/models", tags=["models"])
    async def list_models() -> dict[str, Any]:
        return {"models": [model.describe() for model in models.values()]}

    @app.post("/v1/models/{name}/predict", tags=["models"], response_model=PredictResponse)
    async def predict(request: PredictRequest, model: Annotated[ServedModel, Depends(model_named)]) -> Response:
        task = model.predictor.task
        inputs = check_inputs(request.inputs, task, settings.max_inputs, settings.max_input_chars)
        return JSONResponse({"outputs": await model.batcher.predict(inputs)})


def _add_service_routes(
    app: FastAPI, models: dict[str, ServedModel], indexes: dict[str, Any], metrics: Metrics
) -> None:
    @app.get("/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """`ok` while serving (503 once draining); with one RAG index, its size as `rag serve` gave it."""
        body: dict[str, Any] = {"status": "ok", "models": list(models), "indexes": list(indexes)}
        if len(indexes) == 1:
            only = describe(next(iter(indexes.values())))
            body.update(chunks=only["chunks"], documents=only["documents"])
        return body

    @app.get("/metrics", tags=["service"])
    async def prometheus() -> Response:
        """Prometheus text format; on the event loop, where the queues it reads are changed."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
