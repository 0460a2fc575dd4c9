"""A repository load with parameters the server does not support is refused, naming them."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from server_testlib import TinyModel, start

from protocol import grpc_service_pb2 as pb


async def test_unsupported_load_parameters_are_refused(repository: tuple[Path, dict[str, TinyModel]]) -> None:
    repo, models = repository
    run = await start(repo, models)
    try:
        request = pb.RepositoryModelLoadRequest(model_name="tiny")
        request.parameters["config"].string_param = '{"max_batch_size": 4}'
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await run.infer.RepositoryModelLoad(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "load parameters ['config'] are not supported" in (info.value.details() or "")
        # The version parameter still works.
        request = pb.RepositoryModelLoadRequest(model_name="tiny")
        request.parameters["version"].string_param = "1"
        await run.infer.RepositoryModelLoad(request)
    finally:
        await run.channel.close(None)
        await run.server.stop(0)
