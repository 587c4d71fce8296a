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

