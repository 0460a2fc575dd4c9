"""The HTTP/REST edge: KServe v2 over HTTP/1.1 with Triton's extensions, and the model page.

:mod:`server.rest.codecs` turns JSON and binary bodies into the core's plain types and
back, :mod:`server.rest.app` holds the routes, :mod:`server.rest.serving` runs them on
uvicorn in the gRPC server's event loop.
"""
