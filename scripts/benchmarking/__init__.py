"""The pieces of ``scripts/benchmark.py``, in the order a run uses them.

- :mod:`.plan`: what one run measures and for how long (``--quick``, ``--repeats``);
- :mod:`.models`: the benchmarked models, exported when missing, and what their metadata records;
- :mod:`.provenance`: the commit, whether the tree was dirty, and the machine;
- :mod:`.ceiling`: ONNX Runtime in this process, no RPC: the ceiling the server is held to;
- :mod:`.processes`: our server and the bare baseline handler as subprocesses;
- :mod:`.served`: the served configurations, driven by ``python -m clients.bench``, repeats
  interleaved;
- :mod:`.memory`: the server's resident memory with the default models;
- :mod:`.perf`: Triton's perf_analyzer, a second and independent load generator;
- :mod:`.stats`: the median and min-max of repeated figures;
- :mod:`.results`: everything measured, as one object (and its JSON form);
- :mod:`.targets`: the targets as data, and their verdicts computed from a results object;
- :mod:`.document` and :mod:`.plots`: the Markdown document and its plots, filled only with
  computed values.

The measurement returns data, the verdicts compare data, the rendering only formats it.
"""
