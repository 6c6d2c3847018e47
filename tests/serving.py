"""A `sllm serve` app in a thread for tests: uvicorn on a free loopback port, over an
engine whose model can be slowed down so that slots stay busy while a test looks, with
adapters given as `sllm serve --adapter NAME=PATH` takes them."""
from __future__ import annotations

import threading
import time

import openai
import uvicorn

import sllm
from sllm import backends, serve
from sllm.batching import Engine
from sllm.cli import _adapter_bank
from sllm.tokenizer import from_dict

BACKEND = backends.available()[0]


class ThreadServer:
    """uvicorn serving the app in a thread, on a free loopback port."""

    def __init__(self, model_path, max_batch=4, max_queue=8, api_key=None, step_delay=0.0,
                 adapters=(), **app_options):
        self.model = sllm.load(model_path, backend=BACKEND)
        self.tok = from_dict(self.model.tokenizer)
        if step_delay:  # a slow model, so that slots stay busy while the test looks
            decode_batch = self.model.decode_batch

            def slow(*args):
                time.sleep(step_delay)
                return decode_batch(*args)
            self.model.decode_batch = slow
        self.engine = Engine(self.model, self.tok, max_batch=max_batch, max_queue=max_queue,
                             adapters=_adapter_bank(self.model, "tiny", list(adapters)))
        sock = serve.bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(
            serve.build_app(self.engine, "tiny", api_key, **app_options), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)

    def client(self, **kw):
        """An openai client for this server (no retries: the test sees every status)."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kw.pop("api_key", "none"),
                             max_retries=0, **kw)

    def stop(self):
        """Shut uvicorn (and with it the engine) down."""
        self.server.should_exit = True
        self.thread.join(10)
