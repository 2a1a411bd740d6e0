"""Fixtures: a tiny model, adapter folders of every member, one live uvicorn server (module scope)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

from tests.serve.support import member_configs, write_adapter  # noqa: E402
from tests.train_support import make_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="session")
def adapter_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-adapters")
    for seed, (name, cfg) in enumerate(member_configs().items(), start=1):
        write_adapter(tiny_dir, root / name, cfg, seed)
    return root


@pytest.fixture(scope="session")
def tokenizer(tiny_dir: Path):
    import lorafam as lf

    return lf.load_tokenizer(str(tiny_dir))


def start_server(tiny_dir: Path, tokenizer, adapter_dir: Path | None = None, **kwargs):
    """(engine, server thread) on a fresh tiny model; kwargs: EngineConfig fields + create_app options."""
    import lorafam as lf
    from lorafam.serve.app import ServerThread, create_app
    from lorafam.serve.batching import Engine, EngineConfig
    from lorafam.serve.metrics import Metrics

    app_keys = {"api_key", "allow_runtime_adapters"}
    app_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in app_keys}
    engine = Engine(
        lf.load_model(str(tiny_dir)), tokenizer, base_id="tiny", config=EngineConfig(**kwargs), metrics=Metrics()
    )
    if adapter_dir is not None:
        engine.set_adapter_dir(adapter_dir)
    engine.start()
    server = ServerThread(
        create_app(
            engine,
            allow_runtime_adapters=app_kwargs.get("allow_runtime_adapters", True),
            api_key=app_kwargs.get("api_key"),
        )
    ).start()
    return engine, server


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tokenizer, adapter_dir: Path):
    """A live server with every member loaded from ``adapter_dir``; yields (engine, server, openai client)."""
    import openai

    engine, server = start_server(tiny_dir, tokenizer, adapter_dir, merge_hot=False)
    for name in sorted(p.name for p in adapter_dir.iterdir()):
        engine.load(name, adapter_dir / name)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield engine, server, client
    server.stop()
    engine.close()
