"""Generated protobuf and gRPC modules shared by the server and the clients.

Regenerate with ``scripts/generate_protos.sh``. Importing this package pulls in
protobuf and grpcio only: never onnxruntime or torch.
"""
