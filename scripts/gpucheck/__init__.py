"""The pieces of ``scripts/gpu_check.py``, in the order a run uses them.

- :mod:`.plan`: what one run measures and for how long (``--device cuda`` or the ``cpu`` dry run),
  the models it makes and the exit statuses;
- :mod:`.preflight`: what this machine offers for CUDA inference, found without opening a session,
  and the environment a child process needs to load the NVIDIA wheels' CUDA libraries;
- :mod:`.models`: ResNet-18 exported in FP32, converted to FP16 and published with its agreement;
- :mod:`.measure`: ONNX Runtime in this process: where the nodes run, the ceiling with plain ``run``
  and with I/O binding, and the TensorRT execution provider when this build lists it;
- :mod:`.serve`: ``python -m server --device D`` as a subprocess, where it says it serves the model,
  and ``python -m clients.bench`` against it;
- :mod:`.results`: everything one run found and measured, as one object (and its JSON form);
- :mod:`.verdicts`: the targets as data, compared with a results object;
- :mod:`.document`: the Markdown documents, filled only with computed values.

The server subprocess, the command display, the progress log, the commit and the machine
come from ``scripts/benchmarking`` (:mod:`benchmarking.processes`, :mod:`benchmarking.commands`,
:mod:`benchmarking.provenance`), as do the verdict type and the ceiling's call counts.
"""
