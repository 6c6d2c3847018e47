"""The LoRA adapters of `sllm serve` (sllm.lora_bank): the models a request may name,
GET /v1/models (the base and each adapter, an adapter's `parent` the base), and adding
and removing adapters while serving: POST /v1/adapters {"name", "path"} and DELETE
/v1/adapters/{name}.

Adding and removing need --api-key (without a key they are refused: anyone who can reach
the port could otherwise make the server read files). A removed adapter's name is gone at
once (new requests for it get 404); requests already accepted for it finish with it, and
its tensors are freed when the last of them ends.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import serve_api as api
from .batching import Engine
from .errors import ConfigError, FormatError, LoraError
from .lora import Adapter
from .lora_bank import AdapterBank, Served

ADAPTER_FIELDS: dict[str, api.Check] = {"name": api.string, "path": api.string}


class AdapterEndpoints:
    """Models by name and the adapter endpoints; mixed into sllm.serve.Server."""

    engine: Engine
    model_id: str
    api_key: str | None
    context: int
    started: float
    adapters: AdapterBank | None

    def authorize(self, request: Request) -> None:
        raise NotImplementedError("need authorize")

    async def json_body(self, request: Request) -> Any:
        raise NotImplementedError("need json_body")

    def served_model(self, name: str) -> Served | None:
        """The adapter a request's `model` names (None: the base); 404 for any other name,
        as OpenAI answers an unknown model."""
        if name == self.model_id:
            return None
        served = self.adapters.get(name) if self.adapters is not None else None
        if served is None:
            known = ", ".join(repr(n) for n in self.model_names())
            raise api.ApiError(f"The model '{name}' does not exist; this server serves {known}",
                               "model", status=404, code="model_not_found")
        return served

    def model_names(self) -> list[str]:
        """The base's model id, then each adapter's name."""
        return [self.model_id] + (self.adapters.names() if self.adapters is not None else [])

    def model_card(self, name: str | None = None) -> dict[str, Any]:
        """A served model as OpenAI's model object (max_model_len as vLLM adds it; an
        adapter's `parent` is the base, as vLLM lists LoRA adapters)."""
        card = {"id": name or self.model_id, "object": "model", "created": int(self.started),
                "owned_by": "sllm", "max_model_len": self.context}
        return card if name in (None, self.model_id) else {**card, "parent": self.model_id}

    async def models(self, request: Request) -> Response:
        """GET /v1/models: the base, then each adapter."""
        self.authorize(request)
        return JSONResponse({"object": "list",
                             "data": [self.model_card(n) for n in self.model_names()]})

    async def model(self, request: Request) -> Response:
        """GET /v1/models/{id} (the client's models.retrieve)."""
        self.authorize(request)
        wanted = request.path_params["model"]
        self.served_model(wanted)
        return JSONResponse(self.model_card(wanted))

    def _manage(self, request: Request) -> AdapterBank:
        self.authorize(request)
        if self.api_key is None:
            raise api.ApiError("adding and removing adapters needs a server started with "
                               "--api-key", status=403, code="adapters_need_api_key")
        if self.adapters is None:
            raise api.ApiError("this server's model has an adapter merged in; it serves no "
                               "adapters by name", status=400)
        return self.adapters

    async def add_adapter(self, request: Request) -> Response:
        """POST /v1/adapters {"name", "path"}: read the adapter file (its base's
        fingerprint checked) and serve it under `name` from the next step on."""
        bank = self._manage(request)
        b = api.check_body(await self.json_body(request), ADAPTER_FIELDS, ("name", "path"))
        name, path = b["name"], b["path"]
        try:
            adapter = await asyncio.to_thread(Adapter.load, os.path.expanduser(path))
        except OSError as e:
            raise api.ApiError(f"'path': cannot read {path}: {e.strerror or e}", "path") from None
        except (FormatError, ConfigError) as e:
            raise api.ApiError(f"'path': {e}", "path", code="invalid_adapter") from None
        job = self.engine.run_job(lambda: bank.add(name, adapter, taken=(self.model_id,)))
        try:
            await asyncio.wrap_future(job)
        except LoraError as e:
            raise api.ApiError(f"'path': {e}", "path", code="invalid_adapter") from None
        except ConfigError as e:
            status = 409 if "is taken" in str(e) else 400
            raise api.ApiError(str(e), "name", status=status) from None
        return JSONResponse(self.model_card(name))

    async def remove_adapter(self, request: Request) -> Response:
        """DELETE /v1/adapters/{name}: stop serving it (requests in flight finish)."""
        bank = self._manage(request)
        name = request.path_params["name"]
        if name == self.model_id:
            raise api.ApiError(f"'{name}' is the base model, not an adapter", "name")
        try:
            bank.retire(name)
        except KeyError:
            raise api.ApiError(f"no adapter named '{name}' is served (adapters: "
                               f"{', '.join(bank.names()) or 'none'})", "name", status=404,
                               code="model_not_found") from None
        with contextlib.suppress(RuntimeError):  # wake the engine: it frees what none uses
            self.engine.run_job(lambda: None)
        return JSONResponse({"id": name, "object": "model", "deleted": True})

