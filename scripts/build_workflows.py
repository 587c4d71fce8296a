#!/usr/bin/env python3
"""Rebuild the example workflows in workflows/ with the real ComfyUI frontend.

Each graph below is created node by node in the browser (LiteGraph), so the saved files are
exactly what ComfyUI itself writes when a user saves a workflow. Needs the test set-up
(scripts/setup.sh --test). Run with ComfyUI's venv python:

    .comfyui/venv/bin/python scripts/build_workflows.py
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests")]

from comfyui_server import ComfyUIServer  # noqa: E402

REFERENCE = "character_reference.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]

# name -> (nodes: id -> (type, [x, y], {widget: value}), links: [(from, output, to, input)], notes)
WORKFLOWS = {
    "prepare_character_reference": (
        {
            "load": ("LoadImage", [60, 200], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [420, 200], {}),
            "save": ("SaveImage", [800, 200], {"filename_prefix": "character_identity/reference"}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"), ("prepare", 0, "save", "images")],
        "Prepare Character Reference: load your character image (ideally with a transparent or plain background); "
        "the node pads it to a white square at 1024 px, the input InstantCharacter expects. LoadImage's MASK output "
        "marks transparent pixels, so they become background too. Feed the result into any Character Identity "
        "generator node.",
    ),
    "cloud_providers_side_by_side": (
        {
            "load": ("LoadImage", [40, 160], {"image": REFERENCE}),
            "prepare": ("CharIDPrepareReference", [380, 160], {"size": 1024}),
            "wavespeed": ("CharIDWaveSpeedInstantCharacter", [760, 40],
                          {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                           "seed": 42}),
            "fal": ("CharIDFalInstantCharacter", [760, 560],
                    {"prompt": "the character reading a map in a snowy mountain village, warm evening light",
                     "seed": 42}),
            "segmind": ("CharIDSegmindInstantID", [760, 1080],
                        {"prompt": "portrait photo of the person in a snowy mountain village, warm evening light",
                         "seed": 42}),
            "save_wavespeed": ("SaveImage", [1200, 40], {"filename_prefix": "character_identity/wavespeed"}),
            "save_fal": ("SaveImage", [1200, 560], {"filename_prefix": "character_identity/fal"}),
            "save_segmind": ("SaveImage", [1200, 1080], {"filename_prefix": "character_identity/segmind"}),
            "info_wavespeed": ("PreviewAny", [1560, 40], {}),
            "info_fal": ("PreviewAny", [1560, 560], {}),
            "info_segmind": ("PreviewAny", [1560, 1080], {}),
        },
        [("load", 0, "prepare", "image"), ("load", 1, "prepare", "mask"),
         ("prepare", 0, "wavespeed", "reference"), ("prepare", 0, "fal", "reference"),
         ("prepare", 0, "segmind", "reference"),
         ("wavespeed", 0, "save_wavespeed", "images"), ("fal", 0, "save_fal", "images"),
         ("segmind", 0, "save_segmind", "images"),
         ("wavespeed", 1, "info_wavespeed", "source"), ("fal", 1, "info_fal", "source"),
         ("segmind", 1, "info_segmind", "source")],
        "Three cloud providers on one reference, run at the same time. Keys come from WAVESPEED_API_KEY, FAL_KEY "
        "and SEGMIND_API_KEY (or the keys.ini file, see the README): never type a key into a node. The reference "
        "image is sent to each provider. Every generator node has the same sockets, so any of them can be replaced "
        "by another (local or cloud) without rewiring. The info outputs show job id, seed, timings and cost.",
    ),
}

BUILD_JS = """([nodes, links, note]) => {
  const LG = window.LiteGraph, graph = window.app.graph;
  graph.clear();
  const made = {};
  for (const [key, [type, pos, widgets]] of Object.entries(nodes)) {
    const node = LG.createNode(type);
    if (!node) throw new Error("unknown node type " + type);
    node.pos = pos;
    graph.add(node);
    for (const [name, value] of Object.entries(widgets)) {
      const widget = node.widgets.find(w => w.name === name);
      if (!widget) throw new Error(type + " has no widget " + name);
      widget.value = value;
    }
    // fixed seeds: a shared workflow gives the same images again, and a side-by-side stays comparable
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
    made[key] = node;
  }
  for (const [from, output, to, input] of links) {
    const target = made[to];
    const slot = target.inputs.findIndex(i => i.name === input);
    if (slot < 0) throw new Error(target.type + " has no input " + input);
    made[from].connect(output, target, slot);
  }
  const text = LG.createNode("Note");
  text.pos = [40, -160];
  text.size = [700, 130];
  text.widgets[0].value = note;
  graph.add(text);
  window.app.canvas.setDirty(true, true);
  // stringify here: it drops `undefined` fields, which would otherwise arrive as nulls the
  // frontend's own schema check rejects when the file is loaded
  return JSON.stringify(graph.serialize());
}"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    server = ComfyUIServer(Path(tempfile.mkdtemp(prefix="charid-workflows-"))).start()
    try:
        server.post_json("/settings", {"Comfy.TutorialCompleted": True})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                                 args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_function("() => window.app?.graph && window.app.extensions?.some("
                                   "e => e.name === 'CharacterIdentity.ui')", timeout=90_000)
            for name, (nodes, links, note) in WORKFLOWS.items():
                workflow = json.loads(page.evaluate(BUILD_JS, [nodes, links, note]))
                path = REPO_ROOT / "workflows" / f"{name}.json"
                path.write_text(json.dumps(workflow, indent=2) + "\n")
                print("wrote", path.relative_to(REPO_ROOT))
            browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
