"""Load generator: throughput and latency of a running server, per concurrency level.

::

    python -m clients.bench --server 127.0.0.1:8001 --model lenet \\
        --concurrency 1,4,16,64 --duration 10 --metrics-url http://127.0.0.1:8002/metrics \\
        --json bench.json --plot bench.png

Closed loop (default): at each concurrency level C, C workers each send a request
and wait for its answer before sending the next. Open loop (``--rate R[,R...]``):
requests start at R per second whatever the answers do, latency counted from the
moment each request was due (so a slow server cannot hide its queue), at most
``--max-outstanding`` in flight (the rest are counted as skipped, never sent).

Each level runs ``--warmup`` seconds unmeasured, then ``--duration`` seconds or
``--requests`` requests. It reports throughput, p50/p90/p99/max latency of the
successful requests, failures by gRPC status, the server's mean executed batch size
(from ``--metrics-url``: the change in ``cnnserve_inference_count_total`` over
``cnnserve_execution_count_total`` during the level) and the CPU the generator
itself used, in cores, so a reader can tell whether the generator was the limit
(with ``--server-pid``, the server's CPU too; and the whole machine's, so other load
on a shared machine shows). ``--retries N`` sends the unary requests with the clients' retry
policy (:mod:`clients.retry`); failures are then counted after the retries.

The pieces, in the order a run uses them:

- :mod:`clients.bench.cli`: the flags, their checks, and ``main``;
- :mod:`clients.bench.payloads`: the few serialized requests a run sends, built once;
- :mod:`clients.bench.load`: the load engine, one event loop per load process
  (``--processes N`` runs N of them and the driver merges their results);
- :mod:`clients.bench.driver`: runs each level and measures around it;
- :mod:`clients.bench.metrics`: the server's batch counters, read with prometheus_client's parser;
- :mod:`clients.bench.accounting`: CPU and memory of the server's process tree and of the
  machine, read with psutil;
- :mod:`clients.bench.report`: the table, the JSON document and the plot.
"""
