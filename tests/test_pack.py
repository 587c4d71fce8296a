"""Packaging, layout and start-up rules of the pack."""
from __future__ import annotations

import ast
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "nodes", "server",
                   "execution", "node_helpers", "latent_preview"}


def requirement_names(lines) -> dict[str, str]:
    specs = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-")
            specs[name] = line.replace(" ", "")
    return specs


def test_layout_is_the_fixed_one():
    for entry in ("__init__.py", "nodes", "pipelines", "web", "workflows", "tests", "pyproject.toml",
                  "README.md", "requirements.txt", "benchmarks", "scripts", ".ci/run"):
        assert (REPO_ROOT / entry).exists(), entry


def test_the_keys_example_holds_no_key():
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO_ROOT / "keys.example.ini")
    assert dict(parser["keys"]) == {"wavespeed_api_key": "", "fal_key": "", "segmind_api_key": ""}


def test_pyproject_has_registry_metadata_and_test_extras():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"].endswith("web/icon.svg")
    assert (REPO_ROOT / "web/icon.svg").exists()
    assert "web" not in comfy, "WEB_DIRECTORY already registers web/; a second entry serves it twice"
    project = PYPROJECT["project"]
    assert project["name"] and project["version"] and project["description"] and project["requires-python"]
    assert {"pytest", "playwright"} <= set(requirement_names(project["optional-dependencies"]["test"]))


def test_requirements_txt_matches_pyproject_and_neither_installs_torch():
    declared = requirement_names(PYPROJECT["project"]["dependencies"])
    assert {"diffusers", "transformers", "safetensors", "aiohttp"} <= set(declared)
    # ComfyUI-Manager and the comfy CLI install requirements.txt, pip the pyproject's list, into an
    # environment that already has the torch the user chose: naming torch in either risks replacing
    # a CUDA build, and the README says the pack never installs it.
    assert requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines()) == declared
    for name in declared:
        assert name not in {"torch", "torchvision", "torchaudio", "opencv-python", "insightface"}, name


def test_the_dependency_floors_are_the_ones_the_install_page_says_were_tested():
    """docs/install.md's floors table (package | lowest version that passed) is what requirements.txt asks for."""
    page = (REPO_ROOT / "docs" / "install.md").read_text()
    section = page.split("## Dependency floors", 1)[1].split("\n## ", 1)[0]
    table = dict(re.findall(r"^\| `([a-z0-9-]+)` \| ([0-9][0-9.]*) \|", section, re.M))
    floors = {name: spec for name, spec in requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines()).items()}
    assert {name: f"{name}>={version}" for name, version in table.items()} == floors


def python_files(folder: str):
    return sorted((REPO_ROOT / folder).rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", python_files("pipelines"), ids=lambda p: p.name)
def test_pipelines_know_nothing_of_comfyui(path):
    assert not imported_roots(path) & COMFYUI_MODULES


def test_node_ids_are_prefixed():
    sources = "".join(path.read_text() for path in python_files("nodes"))
    assert 'node_id=node_id("' in sources
    assert "node_id=\"" not in sources.replace('node_id=node_id("', "")


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(\S.*?)\s*#\s*(?:1|2)\b", quick_start, re.M)
    assert commands == ["scripts/start.sh", "scripts/test.sh"], commands
    ci = (REPO_ROOT / ".ci/run").read_text()
    assert re.search(r"^exec bash scripts/test\.sh$", ci, re.M)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_readme_and_the_docs_pages_resolves():
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    assert len(pages) > 5
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert anchor in {github_anchor(h) for h in headings}, f"{page.name}: {target}"


def test_the_python_page_states_build_pipelines_real_defaults_and_outputs():
    """docs/python.md says what build_pipeline does when memory= (and device=, dtype=) are left out, and
    which output= values generate takes: both pipelines' signatures agree."""
    import inspect

    from pipelines.local.instantcharacter import loading as character_loading
    from pipelines.local.instantcharacter.pipeline import InstantCharacterPipeline
    from pipelines.local.instantid import loading as face_loading
    from pipelines.local.instantid.pipeline import InstantIDPipeline

    page = (REPO_ROOT / "docs" / "python.md").read_text()
    stated = page.split("**Defaults of `build_pipeline`**", 1)[1].split("\n\n", 1)[0]
    claimed = dict(re.findall(r'`(\w+)=([^`]+)`', stated))
    assert set(claimed) == {"device", "dtype", "memory"}, claimed
    for build in (character_loading.build_pipeline, face_loading.build_pipeline):
        parameters = inspect.signature(build).parameters
        for name, text in claimed.items():
            assert repr(parameters[name].default).replace("'", '"') == text, (build.__module__, name)
    for generate in (InstantCharacterPipeline.generate, InstantIDPipeline.generate):
        assert inspect.signature(generate).parameters["output"].default == "pil"
    assert '`output="pt"` a float tensor `[B, 3, H, W]` with values in 0..1' in page


def test_the_pipelines_import_from_any_folder_as_the_python_page_says(tmp_path):
    import os
    import subprocess

    page = (REPO_ROOT / "docs" / "python.md").read_text()
    assert "`PYTHONPATH=<the pack's folder> python your_script.py`" in page
    code = ("import pipelines.local.instantcharacter.loading, pipelines.local.instantid.loading, "
            "pipelines.local.instantid.conditioning, pipelines.local.instantid.styles")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    without = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert "No module named 'pipelines'" in without.stderr
    with_path = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**environment, "PYTHONPATH": str(REPO_ROOT)},
                               capture_output=True, text=True)
    assert with_path.returncode == 0, with_path.stderr


@pytest.mark.comfyui
def test_loading_the_pack_in_comfyui_imports_no_heavy_library():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import startup
    finally:
        sys.path.pop(0)
    base = startup.make_base_dir()
    try:
        probe = startup.probe_load(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert probe["ok"]
    assert probe["heavy_modules"] == []
    assert any(name.endswith(".nodes.reference") for name in probe["added_modules"])
