"""TLS, mutual TLS, bearer tokens, the model-control switch and repository confinement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reliability_testlib import (
    TLS_OPTIONS,
    Pki,
    ServerProcess,
    infer_request,
    make_pki,
    output_of,
    repo_args,
    settings_for,
)
from server_testlib import TinyModel

from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc
from server import create_server
from server.errors import StartupError
from server.settings import settings_from_args

TOKEN = "s3cret-token-for-tests-0123456789"
X = np.ones((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _infer_ok(stub: pb_grpc.GRPCInferenceServiceStub, model: TinyModel, **kw: object) -> None:
    response = await stub.ModelInfer(infer_request("tiny", X), timeout=10, **kw)
    np.testing.assert_allclose(output_of(response), model.expected(X), rtol=1e-4, atol=1e-4)


async def _code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_serves_encrypted_and_refuses_plaintext(
    fleet: tuple[Path, dict[str, TinyModel]], pki: Pki
) -> None:
    """With --tls-cert and --tls-key the port serves TLS clients and refuses plaintext ones (UNAVAILABLE)."""
    repo, models = fleet
    server, port = await create_server(
        settings_for(repo, tls_cert=pki.path("server_cert"), tls_key=pki.path("server_key"))
    )
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        async with aio.secure_channel(f"127.0.0.1:{port}", creds, options=TLS_OPTIONS) as channel:
            await _infer_ok(pb_grpc.GRPCInferenceServiceStub(channel), models["tiny"])
        async with aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            code = await _code(
                pb_grpc.GRPCInferenceServiceStub(plain).ServerLive(pb.ServerLiveRequest(), timeout=3)
            )
            assert code == grpc.StatusCode.UNAVAILABLE
        # A client that does not trust the server's CA refuses the connection.
        wrong_ca = grpc.ssl_channel_credentials(root_certificates=pki.rogue_cert)
        async with aio.secure_channel(f"127.0.0.1:{port}", wrong_ca, options=TLS_OPTIONS) as channel:
            code = await _code(
                pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=3)
            )
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    fleet: tuple[Path, dict[str, TinyModel]], pki: Pki
) -> None:
    """With --tls-client-ca, clients without a certificate or with one from another CA fail the handshake."""
    repo, models = fleet
    server, port = await create_server(
        settings_for(
            repo,
            tls_cert=pki.path("server_cert"),
            tls_key=pki.path("server_key"),
            tls_client_ca=pki.path("ca"),
        )
    )
    address = f"127.0.0.1:{port}"
    try:
        good = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert)
        async with aio.secure_channel(address, good, options=TLS_OPTIONS) as channel:
            await _infer_ok(pb_grpc.GRPCInferenceServiceStub(channel), models["tiny"])
        for creds in (
            grpc.ssl_channel_credentials(pki.ca),  # no client certificate
            grpc.ssl_channel_credentials(pki.ca, pki.rogue_key, pki.rogue_cert),  # signed by another CA
        ):
            async with aio.secure_channel(address, creds, options=TLS_OPTIONS) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                assert (
                    await _code(stub.ModelInfer(infer_request("tiny", X), timeout=3))
                    == grpc.StatusCode.UNAVAILABLE
                )
    finally:
        await server.stop(0)


async def test_bad_tls_files_are_startup_errors(fleet: tuple[Path, dict[str, TinyModel]], pki: Pki) -> None:
    """A missing or non-PEM TLS file, or a certificate without its key, stops start-up with an error naming
    it.
    """
    repo, _ = fleet
    missing = pki.directory / "missing.pem"
    with pytest.raises(StartupError, match="cannot read the TLS certificate"):
        await create_server(settings_for(repo, tls_cert=missing, tls_key=pki.path("server_key")))
    not_pem = pki.directory / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(StartupError, match="is not PEM"):
        await create_server(settings_for(repo, tls_cert=pki.path("server_cert"), tls_key=not_pem))
    with pytest.raises(ValueError, match="expected both or neither"):
        settings_for(repo, tls_cert=pki.path("server_cert"))


# -- token ----------------------------------------------------------------------------------------


@pytest.fixture
async def token_server(fleet: tuple[Path, dict[str, TinyModel]]) -> AsyncIterator[tuple[int, TinyModel]]:
    repo, models = fleet
    server, port = await create_server(settings_for(repo, auth_token=TOKEN))
    try:
        yield port, models["tiny"]
    finally:
        await server.stop(0)


async def test_token_required_on_every_rpc_except_health(token_server: tuple[int, TinyModel]) -> None:
    """With a token, every RPC but health and its streams get UNAUTHENTICATED naming the problem, never
    echoing the token; reflection is behind it.
    """
    port, model = token_server
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        good = (("authorization", f"Bearer {TOKEN}"),)
        await _infer_ok(stub, model, metadata=good)
        await _infer_ok(stub, model, metadata=(("authorization", f"bearer {TOKEN}"),))  # scheme is case-blind
        for metadata, message in (
            ((), "missing 'authorization' metadata"),
            ((("authorization", "Bearer wrong-token-wrong-token"),), "invalid bearer token"),
            ((("authorization", f"Bearer {TOKEN}x"),), "invalid bearer token"),
            ((("authorization", TOKEN),), "not of the form 'Bearer <token>'"),
            ((("authorization", f"Basic {TOKEN}"),), "not of the form 'Bearer <token>'"),
            ((("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x")), "2 'authorization'"),
        ):
            for call in (
                stub.ModelInfer(infer_request("tiny", X), metadata=metadata, timeout=5),
                stub.ServerLive(pb.ServerLiveRequest(), metadata=metadata, timeout=5),
                stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=metadata, timeout=5),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert message in (info.value.details() or "")
                assert TOKEN not in (info.value.details() or "")
            # Streaming RPCs are refused the same way.
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.ModelStreamInfer(iter([infer_request("tiny", X)]), metadata=metadata):
                    pass
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health checks need no token: probes carry no credentials.
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # Reflection is behind the token.
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in reflect.ServerReflectionInfo(iter([request])):
                pass
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answers = [a async for a in reflect.ServerReflectionInfo(iter([request]), metadata=good)]
        assert any(
            s.name == "inference.GRPCInferenceService" for s in answers[0].list_services_response.service
        )


async def test_unauthenticated_requests_are_refused_before_they_are_parsed(
    token_server: tuple[int, TinyModel],
) -> None:
    """Bytes that are no ModelInferRequest get UNAUTHENTICATED, not a parse error: nothing was parsed."""
    port, _model = token_server
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for method in (
            "/inference.GRPCInferenceService/ModelInfer",
            "/inference.GRPCInferenceService/ModelStreamInfer",
        ):
            if method.endswith("StreamInfer"):
                call = channel.stream_stream(method)(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in call:
                        pass
            else:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary(method)(b"\xff\xff\xff\xff not protobuf", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert "missing 'authorization' metadata" in (info.value.details() or "")


async def test_token_and_tls_together(fleet: tuple[Path, dict[str, TinyModel]], pki: Pki) -> None:
    """Token authentication and TLS work together (gRPC access-token call credentials)."""
    repo, models = fleet
    server, port = await create_server(
        settings_for(repo, auth_token=TOKEN, tls_cert=pki.path("server_cert"), tls_key=pki.path("server_key"))
    )
    try:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(pki.ca), grpc.access_token_call_credentials(TOKEN)
        )
        async with aio.secure_channel(f"127.0.0.1:{port}", creds, options=TLS_OPTIONS) as channel:
            await _infer_ok(pb_grpc.GRPCInferenceServiceStub(channel), models["tiny"])
    finally:
        await server.stop(0)


def test_token_settings(tmp_path: Path) -> None:
    """Tokens come from the flag, the environment or a file; empty, short, spaced or doubly given tokens are
    refused; the token is not in repr(Settings).
    """
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert settings_from_args(["--auth-token-file", str(token_file)], {}).auth_token == TOKEN
    assert settings_from_args([], {"CNNSERVE_AUTH_TOKEN": TOKEN}).auth_token == TOKEN
    assert settings_from_args([], {}).auth_token is None
    assert TOKEN not in repr(settings_from_args([], {"CNNSERVE_AUTH_TOKEN": TOKEN}))
    for argv, env in (
        ([], {"CNNSERVE_AUTH_TOKEN": ""}),  # an empty secret is a mistake, not "no auth"
        ([], {"CNNSERVE_AUTH_TOKEN": "short"}),
        ([], {"CNNSERVE_AUTH_TOKEN": "has a space in it!!"}),
        (["--auth-token", TOKEN, "--auth-token-file", str(token_file)], {}),
        (["--auth-token-file", str(tmp_path / "missing")], {}),
    ):
        with pytest.raises(SystemExit):
            settings_from_args(argv, env)
    env = {"CNNSERVE_ALLOW_MODEL_CONTROL": "1", "CNNSERVE_MAX_CONCURRENT_STREAMS": "7"}
    settings = settings_from_args([], env)
    assert settings.allow_model_control and settings.max_concurrent_streams == 7
    assert settings_from_args(["--allow-model-control"], {}).allow_model_control
    assert not settings_from_args([], {"CNNSERVE_ALLOW_MODEL_CONTROL": "0"}).allow_model_control
    assert not settings_from_args([], {}).allow_model_control


# -- model control --------------------------------------------------------------------------------


async def test_model_control_is_off_by_default(fleet: tuple[Path, dict[str, TinyModel]]) -> None:
    """RepositoryModelLoad/Unload answer PERMISSION_DENIED naming --allow-model-control unless it is given."""
    repo, models = fleet
    server, port = await create_server(settings_for(repo))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for call, request in (
                (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="tiny")),
                (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="tiny")),
                (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="../etc")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(request, timeout=5)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "--allow-model-control" in (info.value.details() or "")
            await _infer_ok(stub, models["tiny"])  # the model was not unloaded
    finally:
        await server.stop(0)


async def test_model_control_is_behind_the_token(fleet: tuple[Path, dict[str, TinyModel]]) -> None:
    """With a token, model control also needs it."""
    repo, _ = fleet
    server, port = await create_server(settings_for(repo, auth_token=TOKEN, allow_model_control=True))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.RepositoryModelUnloadRequest(model_name="wide")
            assert await _code(stub.RepositoryModelUnload(request)) == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", f"Bearer {TOKEN}"),)
            assert (await stub.ModelReady(pb.ModelReadyRequest(name="wide"), metadata=good)).ready
            await stub.RepositoryModelUnload(request, metadata=good)
            assert not (await stub.ModelReady(pb.ModelReadyRequest(name="wide"), metadata=good)).ready
    finally:
        await server.stop(0)


# -- confinement ----------------------------------------------------------------------------------


async def test_names_never_leave_the_repository(tmp_path: Path) -> None:
    """No model name or version in a request reaches a model outside the repository (traversal, absolute
    paths, odd versions: INVALID_ARGUMENT or NOT_FOUND).
    """
    # A real model just outside the repository: no request may reach it.
    from server_testlib import publish_tiny

    outside = publish_tiny(tmp_path, "outside", seed=9)
    repo = tmp_path / "repo"
    publish_tiny(repo, "tiny", seed=1)
    assert outside.name == "outside"
    server, port = await create_server(settings_for(repo, allow_model_control=True))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for name in (
                "../outside",
                "..",
                "../repo/../outside",
                "/" + str(tmp_path / "outside"),
                "outside",
            ):
                code = await _code(stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name)))
                assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), name
                code = await _code(stub.ModelInfer(infer_request(name, X)))
                assert code == grpc.StatusCode.NOT_FOUND, name
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
            assert [m.name for m in index.models] == ["tiny"]
    finally:
        await server.stop(0)


def test_cli_tls_and_token_from_environment(fleet: tuple[Path, dict[str, TinyModel]], pki: Pki) -> None:
    """python -m server takes TLS files and the token from CNNSERVE_* variables and logs what it enforces."""
    repo, _ = fleet
    env = {
        "CNNSERVE_TLS_CERT": str(pki.path("server_cert")),
        "CNNSERVE_TLS_KEY": str(pki.path("server_key")),
        "CNNSERVE_TLS_CLIENT_CA": str(pki.path("ca")),
        "CNNSERVE_AUTH_TOKEN": TOKEN,
    }
    process = ServerProcess(repo_args(repo), env=env)
    try:
        assert "mutual TLS; bearer token required; model control disabled" in process.log
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert),
            grpc.access_token_call_credentials(TOKEN),
        )
        with grpc.secure_channel(process.address, creds, options=TLS_OPTIONS) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelReady(pb.ModelReadyRequest(name="tiny"), timeout=10).ready
        process.terminate()
        assert process.wait(30) == 0
        assert TOKEN not in process.log
    finally:
        process.kill()
