"""Which branch a route runs, from the facts the host gathers."""
from __future__ import annotations

import pytest

from pipelines.routing import choose_branch


def test_forced_branches_ignore_the_facts():
    assert choose_branch("local", 12, ["node 3: missing"], "cpu", None).branch == "local"
    assert choose_branch("cloud", 0, [], "cuda:0", 80.0).branch == "cloud"
    assert choose_branch("cloud", 0, [], "cuda:0", 80.0).reason == "forced: prefer = cloud"


@pytest.mark.parametrize("missing, device, free, branch, reason", [
    ([], "cuda:0", 40.0, "local", "all local model files present and 40.0 GB of VRAM free on cuda:0 (≥ 12 GB)"),
    ([], "cuda:0", 8.5, "cloud", "8.5 GB of VRAM free on cuda:0, below the 12 GB asked for"),
    ([], "cpu", None, "cloud", "ComfyUI runs on the CPU (no GPU for the local branch)"),
    (["node 10: 'ip-adapter.bin' is not in …"], "cuda:0", 40.0, "cloud",
     "local model files missing — node 10: 'ip-adapter.bin' is not in …"),
])
def test_auto_picks_local_only_with_every_file_and_enough_free_memory(missing, device, free, branch, reason):
    route = choose_branch("auto", 12, missing, device, free)
    assert (route.branch, route.reason) == (branch, reason)


def test_an_unknown_preference_is_refused():
    with pytest.raises(ValueError, match="prefer = 'gpu' is not one of auto, local, cloud"):
        choose_branch("gpu", 12, [], "cpu", None)



# ---- the route node under ComfyUI's own execution engine, with a fake GPU (tests/comfyui_engine.py) ----

ROUTE = "CharIDRouteLocalOrCloud"
LOCAL_NODES, CLOUD_NODES = {"1", "2"}, {"3", "4"}


def route_prompt(prefer: str) -> dict:
    """Two branches any ComfyUI has (a red and a blue image, each with an info text) into the route."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "PrimitiveString", "inputs": {"value": '{"backend": "local"}'}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0x0000FF}},
        "4": {"class_type": "PrimitiveString", "inputs": {"value": '{"backend": "cloud"}'}},
        "5": {"class_type": ROUTE, "inputs": {"prefer": prefer, "min_free_vram_gb": 12.0,
                                              "local_images": ["1", 0], "local_info": ["2", 0],
                                              "cloud_images": ["3", 0], "cloud_info": ["4", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 2]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}},
    }


@pytest.fixture(scope="module")
def engine_runs():
    """One engine process for all cases: free VRAM 40 GB at the first reading and 2 GB after it (a
    resident local run took it), the other way round, and that prompt queued twice."""
    from comfyui_engine import run_prompts

    cases = {"auto_local": (route_prompt("auto"), [40.0, 2.0], 1), "auto_cloud": (route_prompt("auto"), [2.0, 40.0], 1),
             "queued_twice": (route_prompt("auto"), [2.0, 40.0], 2)}
    reports = iter(run_prompts([{"prompt": prompt, "free_vram_gb": readings, "runs": runs}
                                for prompt, readings, runs in cases.values()]))
    return {name: [next(reports) for _ in range(runs)] if runs > 1 else next(reports)
            for name, (_, _, runs) in cases.items()}


def outputs(report) -> tuple[str, str]:
    return report["outputs"]["6"]["text"][0], report["outputs"]["7"]["text"][0]


def test_a_local_run_that_lowers_free_vram_does_not_bill_the_cloud_branch_too(engine_runs):
    from comfyui_engine import executed

    report = engine_runs["auto_local"]
    assert report["success"]
    decided = "local: all local model files present and 40.0 GB of VRAM free on cuda:0 (≥ 12 GB)"
    assert outputs(report) == (decided, '{"backend": "local"}')     # the reason decided, the branch's own info
    assert report["readings"] == [40.0]                             # one decision: free memory read once
    assert LOCAL_NODES <= set(executed(report)) and not CLOUD_NODES & set(executed(report))
    # reported as made: under the node before the chosen branch starts, and the same text at the end
    events = [(event, data.get("node"), data.get("text")) for event, data in report["events"]]
    assert events.index(("progress_text", "5", decided)) < events.index(("executing", "1", None))


def test_auto_with_too_little_free_vram_runs_only_the_cloud_branch(engine_runs):
    from comfyui_engine import executed

    report = engine_runs["auto_cloud"]
    assert outputs(report) == ("cloud: 2.0 GB of VRAM free on cuda:0, below the 12 GB asked for",
                               '{"backend": "cloud"}')
    assert report["readings"] == [2.0]
    assert CLOUD_NODES <= set(executed(report)) and not LOCAL_NODES & set(executed(report))


def test_auto_decides_again_when_the_same_prompt_is_queued_again(engine_runs):
    """A cached decision would keep a stale branch: memory freed since (or files added) counts."""
    from comfyui_engine import executed

    first, second = engine_runs["queued_twice"]
    assert outputs(first)[0].startswith("cloud: 2.0 GB") and outputs(second)[0].startswith("local: all local")
    assert first["readings"] == [2.0] and second["readings"] == [40.0]
    assert LOCAL_NODES <= set(executed(second)) and "3" not in executed(second)      # the cloud branch: cached
