"""The README's curl examples, run as they are written against a real server with a real LeNet.

The lines say ``localhost:8000``; a ``.curlrc`` in ``$CURL_HOME`` (``connect-to``) sends
that to the test server's port, so not a character of the commands changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from server_testlib import Running, export_lenet, start

from server.tensors import softmax

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
MARKER = "<!-- curl-examples -->"


def readme_commands() -> list[str]:
    """The lines of the sh block after the marker."""
    text = README.read_text()
    block = re.search(re.escape(MARKER) + r"\s*```sh\n(.*?)```", text, re.S)
    assert block, f"README.md has no ```sh block after {MARKER}"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_lenet(tmp_path_factory.mktemp("readme-repo"), "--epochs", "1", "--max-train-samples", "300")


@pytest.fixture
async def lenet(exported: Path) -> AsyncIterator[Running]:
    run = await start(exported, {}, http_port=0)
    try:
        yield run
    finally:
        await run.channel.close(None)
        await run.server.stop(0)


def digit_png(path: Path, exported: Path) -> str:
    """Write a test digit that LeNet classifies correctly (by ONNX Runtime itself); its label."""
    import onnxruntime as ort

    from export.data import digits_images
    from modelrepo import preprocess_image
    from modelrepo.repository import read_version

    version = read_version(exported, "lenet", 1)
    session = ort.InferenceSession(str(version.model_path))
    images, targets, labels = digits_images()
    for image, target in zip(images, targets, strict=True):
        x = preprocess_image(image, version.config.preprocessing)[None]
        scores = softmax(session.run(None, {session.get_inputs()[0].name: x})[0])[0]
        if int(np.argmax(scores)) == int(target):
            image.save(path)
            return labels[int(target)]
    raise AssertionError("no digit that LeNet gets right")


async def test_readme_curl_examples_run_as_written(lenet: Running, exported: Path, tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 5, commands
    label = digit_png(tmp_path / "digit.png", exported)
    port = lenet.server.http_port
    (tmp_path / ".curlrc").write_text(f'connect-to = "localhost:8000:127.0.0.1:{port}"\nfail-with-body\n')
    env = {**os.environ, "CURL_HOME": str(tmp_path)}
    answers: dict[str, object] = {}
    for command in commands:
        process = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", command, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, f"{command}\nexit {process.returncode}\n{out.decode()}{err.decode()}"
        if command.startswith("curl"):
            answers[command] = json.loads(out)
    by_path = {re.search(r"localhost:8000(/\S*?)'?(?:\s|$)", c).group(1): a for c, a in answers.items()}  # type: ignore[union-attr]
    assert by_path["/v2/health/ready"] == {"ready": True}
    assert by_path["/v2/models/lenet"]["inputs"][0]["shape"] == [-1, 1, 28, 28]  # type: ignore[index]
    for path in ("/v2/models/lenet/classify?top_k=3", "/v2/classify"):
        classes = by_path[path]["results"][0]["classes"]  # type: ignore[index]
        assert classes[0]["label"] == label, (path, classes)
    assert len(by_path["/v2/models/lenet/classify?top_k=3"]["results"][0]["classes"]) == 3  # type: ignore[index]
    (output,) = by_path["/v2/models/lenet/infer"]["outputs"]  # type: ignore[index]
    assert output["datatype"] == "BYTES" and output["shape"] == [1, 3]
    assert all(re.fullmatch(r"-?\d+\.\d+:\d:\d", entry) for entry in output["data"]), output
    stats = by_path["/v2/models/lenet/stats"]["model_stats"][0]  # type: ignore[index]
    # Three inferences (two classify requests and the infer) before the stats call.
    assert stats["inference_stats"]["success"]["count"] == 3, stats
