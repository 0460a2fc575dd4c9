"""The gRPC edge: KServe v2 ``GRPCInferenceService`` and ``cnnserve.v1.ImageClassification``.

Protobuf exists only here: :mod:`server.grpc.converters` turns messages into the core's
plain types and back, :mod:`server.grpc.servicers` calls the core and maps its errors to
status codes, :mod:`server.grpc.auth` checks bearer tokens.
"""
