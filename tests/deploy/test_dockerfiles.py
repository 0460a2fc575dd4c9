"""Static checks of docker/Dockerfile.server and docker/Dockerfile.export (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from deploytools import (
    EXPORT_DOCKERFILE,
    ROOT,
    SERVER_DOCKERFILE,
    Dockerfile,
    check_python_command,
    parse_dockerfile,
)


def resolve_image(dockerfile: Dockerfile, base: str) -> str:
    """A FROM reference with global ARG defaults substituted."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: dockerfile.global_args.get(m[1], m[0]), base)


@pytest.mark.parametrize("path", [SERVER_DOCKERFILE, EXPORT_DOCKERFILE], ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_full_version(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    stage_names = {s.name for s in dockerfile.stages}
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        image = resolve_image(dockerfile, stage.base)
        _name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{path.name}: FROM {image!r}; expected a pinned tag, not latest"
        assert re.match(r"\d+\.\d+\.\d+", tag), f"{path.name}: FROM {image!r}; expected a full x.y.z version"


@pytest.mark.parametrize("path", [SERVER_DOCKERFILE, EXPORT_DOCKERFILE], ids=lambda p: p.name)
def test_final_stage_runs_as_a_non_root_user(path: Path) -> None:
    final = parse_dockerfile(path).final
    users = final.all("USER")
    assert users, f"{path.name}: the final stage has no USER; it would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"{path.name}: final USER is {user!r}; expected a non-root user"
    # Anything after USER that needs root (RUN chown, installs) would fail or be a smell.
    after = final.instructions[final.instructions.index(users[-1]) + 1 :]
    assert not [i for i in after if i.keyword == "RUN"], f"{path.name}: RUN after the final USER"


@pytest.mark.parametrize("path", [SERVER_DOCKERFILE, EXPORT_DOCKERFILE], ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(path: Path) -> None:
    dockerfile = parse_dockerfile(path)
    ignore = read_dockerignore(ROOT / ".dockerignore")
    copied = 0
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            assert instruction.keyword == "COPY", f"{path.name}:{instruction.line}: use COPY, not ADD"
            if "from" in instruction.flags:
                continue
            *sources, _destination = instruction.args.split()
            for source in sources:
                relative = source.rstrip("/")
                assert (ROOT / relative).exists(), f"{path.name}:{instruction.line}: {source} does not exist"
                assert not is_ignored(relative, ignore), (
                    f"{path.name}:{instruction.line}: {source} is excluded by .dockerignore"
                )
                copied += 1
    assert copied, f"{path.name} copies nothing from the build context"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignore = read_dockerignore(ROOT / ".dockerignore")
    for path in [".venv/bin/python", ".git/HEAD", "model_repository/lenet/1/model.onnx", "tests/x.py"]:
        assert is_ignored(path, ignore), f"{path} is sent to the Docker build context"
    assert is_ignored("server/__pycache__/app.cpython-311.pyc", ignore)
    assert not is_ignored("server/__main__.py", ignore)


def test_serving_image_has_health_check_through_the_project_client(server_dockerfile: Dockerfile) -> None:
    (healthcheck,) = server_dockerfile.final.all("HEALTHCHECK")
    argv = healthcheck.exec_form()
    assert argv is not None, "HEALTHCHECK CMD must use the exec (JSON) form"
    assert argv[:3] == ["python", "-m", "clients.health"], f"HEALTHCHECK runs {argv}"
    check_python_command(argv, "Dockerfile.server HEALTHCHECK")


@pytest.mark.parametrize(
    ("path", "module"),
    [(SERVER_DOCKERFILE, "server"), (EXPORT_DOCKERFILE, "export")],
    ids=["server", "export"],
)
def test_default_command_is_the_entry_point(path: Path, module: str) -> None:
    final = parse_dockerfile(path).final
    # An ENTRYPOINT would break `docker compose run --rm export python -m export NAME`.
    assert not final.all("ENTRYPOINT"), f"{path.name} has an ENTRYPOINT"
    (cmd,) = final.all("CMD")
    argv = cmd.exec_form()
    assert argv is not None and argv[2] == module, f"{path.name}: CMD is {cmd.args}"
    check_python_command(argv, f"{path.name} CMD")


def test_serving_image_installs_no_torch_and_no_downloads(server_dockerfile: Dockerfile) -> None:
    for stage in server_dockerfile.stages:
        for run in stage.all("RUN"):
            text = run.args.lower()
            for word in ("torch", "[export", "export]", "curl ", "wget ", "apt-get install", "gcc"):
                assert word not in text, f"Dockerfile.server:{run.line}: RUN mentions {word.strip()!r}"


def test_gpu_flavour_points_the_loader_at_the_wheel_libraries(server_dockerfile: Dockerfile) -> None:
    final_env = " ".join(e.args for e in server_dockerfile.final.all("ENV"))
    checked = " ".join(r.args for r in server_dockerfile.stage("venv").all("RUN"))
    for directory in ("cu13/lib", "cudnn/lib"):
        assert f"site-packages/nvidia/{directory}" in final_env, f"LD_LIBRARY_PATH lacks nvidia/{directory}"
        assert f"{directory}/lib" in checked, f"the gpu build does not check that nvidia/{directory} exists"
    assert "FLAVOR" in server_dockerfile.args_declared()


# .dockerignore: Docker's rules, simplified: patterns in order, the last match wins, '!'
# re-includes, and a pattern that matches a directory matches everything under it.
def read_dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                regex += ".*"
                i += 2
                if pattern.startswith("/", i):
                    regex += "/?"
                    i += 1
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((include, re.compile(regex + "$")))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for include, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            ignored = not include
    return ignored
