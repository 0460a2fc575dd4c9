"""The benchmark's baseline: the smallest KServe v2 gRPC server that can answer ModelInfer.

One grpc.aio handler, one ONNX Runtime session, one ``session.run`` per request on the
event loop: no batching, no validation, no metrics, no health. It shows what the
serving stack itself costs, so the benchmark compares our server against it in the
same run. Only the FP32 raw-contents path that ``clients.bench`` sends is handled, and
ModelMetadata, which ``clients.bench`` reads first to build its requests.

::

    python scripts/bare_server.py --model-file model_repository/lenet/1/model.onnx --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol import grpc_service_pb2 as pb
from protocol import grpc_service_pb2_grpc as pb_grpc


class BareInference(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        self.output = session.get_outputs()[0].name

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: object
    ) -> pb.ModelMetadataResponse:
        # What clients.bench asks first, to build its requests; dynamic dimensions are -1.
        response = pb.ModelMetadataResponse(name=request.name, platform="onnxruntime_onnx")
        for tensor, into in (
            (self.session.get_inputs()[0], response.inputs),
            (self.session.get_outputs()[0], response.outputs),
        ):
            shape = [d if isinstance(d, int) else -1 for d in tensor.shape]
            into.add(name=tensor.name, datatype="FP32", shape=shape)
        return response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:
        shape = list(request.inputs[0].shape)
        array = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(shape)
        [result] = self.session.run([self.output], {self.input: array})
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name=self.output, datatype="FP32", shape=result.shape)
        response.raw_output_contents.append(np.ascontiguousarray(result, np.float32).tobytes())
        return response


async def serve(model_file: Path, host: str, port: int, threads: int) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(BareInference(session), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"bare server listening on {host}:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()
    asyncio.run(serve(args.model_file, args.host, args.port, args.threads))


if __name__ == "__main__":
    main()
