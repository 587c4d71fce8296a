"""InstantID's face input: the InstantID Face node, InstantID Face (precomputed) and the all-in-one
InstantID (local) node's optional `face` input, with the tiny antelopev2 models (tests/face_models.py)
and the tiny SDXL (tests/instantid_models.py).

ComfyUI's executor (in a separate Python, as tests/comfyui_engine.py runs it, the face objects read
from its output cache) shows what the face nodes give: the face the all-in-one path prepares from the
same pixels, the precomputed numbers exactly, and the problems refused at queue time by input name. A
real ComfyUI over HTTP shows what the face input does to the all-in-one node: the same image bit for
bit as analysing the reference, from either face node."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import face_models
from comfyui_engine import ENGINE_SERVER_AND_PACK
from comfyui_server import PACK_NAME, REPO_ROOT, comfyui_dir, error_message, socket_layout

pytestmark = pytest.mark.comfyui

FACE = "CharIDInstantIDFace"
PRECOMPUTED = "CharIDInstantIDFacePrecomputed"
FACES = "CharIDFaceModelsLoader"
LOCAL = "CharIDInstantIDLocal"


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def keypoint_text(kps) -> str:
    """Keypoints as a user would paste them, each float32 written so it reads back exactly."""
    return json.dumps([[float(x), float(y)] for x, y in np.asarray(kps)])


def box_text(bbox) -> str:
    return ", ".join(repr(float(v)) for v in bbox)


# ---- ComfyUI's executor: what the face nodes give ---------------------------------------------------

ENGINE = r"""
import asyncio, collections, inspect, json, os, sys, tempfile
comfy_root, pack_root, pack_name, base, out = sys.argv[1:6]
prompts = json.loads(sys.stdin.read())
sys.path.insert(0, comfy_root)
os.chdir(comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = base          # models/ and input/ of this test, before folder_paths reads it
import utils.extra_config              # before nodes.py puts comfy/ on the path, as main.py does
import folder_paths
assert folder_paths.get_input_directory() == os.path.join(base, "input"), folder_paths.get_input_directory()
import numpy as np
import server
import nodes, execution
""" + ENGINE_SERVER_AND_PACK + r"""

def cached_outputs(executor, node_id):
    entry = executor.caches.outputs.get(node_id)
    if inspect.isawaitable(entry):                   # ComfyUI 0.4 and later
        entry = asyncio.run(entry)
    return None if entry is None else entry.outputs

reports = {}
for name, prompt in prompts.items():
    stub = server.PromptServer.instance = Server()
    valid = asyncio.run(execution.validate_prompt(name, prompt, None))
    report = reports[name] = {"valid": valid[0], "node_errors": valid[3], "faces": {}}
    if not valid[0]:
        continue
    executor = execution.PromptExecutor(stub, cache_type=execution.CacheType.CLASSIC,
                                        cache_args=collections.defaultdict(float))
    executor.execute(prompt, name, {"client_id": "engine"}, valid[2])
    report["success"] = executor.success
    report["errors"] = [data["exception_message"].strip() for event, data in stub.events if event == "execution_error"]
    for node_id, node in prompt.items():
        outputs = cached_outputs(executor, node_id)
        if not outputs:
            continue
        if node["class_type"].startswith("CharIDInstantIDFace"):
            face = outputs[0][0]
            report["faces"][node_id] = {
                "type": type(face).__name__, "embedding": face.embedding.tolist(), "kps": face.kps.tolist(),
                "size": list(face.size), "bbox": None if face.bbox is None else face.bbox.tolist(),
                "dtypes": [str(face.embedding.dtype), str(face.kps.dtype)]}
        elif node["class_type"] == "LoadImage":       # the pixels the face nodes were given
            pixels = (outputs[0][0][0].numpy() * 255).round().astype(np.uint8)
            np.save(os.path.join(out, f"{name}-{node_id}.npy"), pixels)
print("REPORT " + json.dumps(reports))
"""

PORTRAIT = face_models.scene((40, 30, 90, 80), (150, 60, 300, 210))       # two faces: the larger is the identity
POSE = face_models.scene((200, 20, 280, 100), size=(300, 400))
NO_FACE = face_models.scene(size=(320, 240))


def face_prompt(*nodes: tuple[str, str, dict]) -> dict:
    """LoadImage for each photo named, the face models, and the given face nodes each previewed (an
    output node, so ComfyUI runs them)."""
    prompt = {"9": {"class_type": FACES, "inputs": {"antelopev2": "models/antelopev2", "provider": "auto"}}}
    for node_id, class_type, inputs in nodes:
        for socket in ("reference", "pose"):
            if isinstance(inputs.get(socket), str):
                loader = f"{node_id}_{socket}"
                prompt[loader] = {"class_type": "LoadImage", "inputs": {"image": inputs[socket]}}
                inputs = {**inputs, socket: [loader, 0]}
        if class_type == FACE:
            inputs = {"face_models": ["9", 0], **inputs}
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        prompt[f"{node_id}p"] = {"class_type": "PreviewAny", "inputs": {"source": [node_id, 0]}}
    return prompt


def precomputed(embedding="face.npy", keypoints="", width=1280, height=960, bbox="") -> tuple[str, str, dict]:
    return ("6", PRECOMPUTED, {"embedding": embedding, "keypoints": keypoints, "width": width, "height": height,
                               "bbox": bbox})


@pytest.fixture(scope="module")
def engine_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("face-input-base")
    face_models.antelopev2(base / "models" / "insightface" / "models" / "antelopev2")
    (base / "input").mkdir()
    for name, image in (("portrait.png", PORTRAIT), ("pose.png", POSE), ("no_face.png", NO_FACE)):
        image.save(base / "input" / name)
    return base


@pytest.fixture(scope="module")
def analyzer(engine_base):
    from pipelines.local.faces import FaceAnalyzer

    return FaceAnalyzer(engine_base / "models" / "insightface" / "models" / "antelopev2")


def run_engine(base, prompts: dict, out) -> dict:
    result = subprocess.run([sys.executable, "-c", ENGINE, str(comfyui_dir() / "ComfyUI"), str(REPO_ROOT), PACK_NAME,
                             str(base), str(out)], input=json.dumps(prompts), capture_output=True, text=True,
                            timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT "):])


@pytest.fixture(scope="module")
def engine(engine_base, analyzer, tmp_path_factory):
    """Every prompt of this part, in one run of ComfyUI's executor (one Python start)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(3)
    embedding = (rng.standard_normal(512) * 20).astype(np.float32)
    kps = np.array([[501.25, 380.5], [610.0625, 377.75], [555.5, 440.125], [512.0, 500.5], [600.75, 498.25]],
                   np.float32) + rng.random((5, 2)).astype(np.float32)
    inputs = engine_base / "input"
    np.save(inputs / "face.npy", embedding[None])                        # [1, 512], as insightface stacks them
    (inputs / "faces").mkdir()
    save_file({"embedding": embedding, "note": np.zeros(3, np.float32)}, str(inputs / "faces" / "alice.safetensors"))
    np.save(inputs / "short.npy", embedding[:256])
    np.save(inputs / "ints.npy", np.arange(512))
    np.save(inputs / "zeros.npy", np.zeros(512, np.float32))
    save_file({"a": embedding, "b": embedding}, str(inputs / "two.safetensors"))
    (inputs / "broken.npy").write_bytes(b"\x93NUMPY not really")
    given = {"embedding": embedding, "kps": kps, "bbox": np.array([480.5, 340.25, 640.75, 530.5], np.float32)}

    prompts = {
        "reference": face_prompt(("4", FACE, {"reference": "portrait.png"})),
        "posed": face_prompt(("4", FACE, {"reference": "portrait.png", "pose": "pose.png"})),
        "no_face": face_prompt(("4", FACE, {"reference": "no_face.png"})),
        "pose_no_face": face_prompt(("4", FACE, {"reference": "portrait.png", "pose": "no_face.png"})),
        "precomputed": face_prompt(precomputed(keypoints=keypoint_text(kps), bbox=box_text(given["bbox"]))),
        "safetensors": face_prompt(precomputed("faces/alice.safetensors", " ".join(map(str, kps.ravel().tolist())),
                                               width=96, height=64)),
        "bad_shapes": face_prompt(precomputed("short.npy", "[[1, 2], [3, 4], [5, 6], [7, 8]]", bbox="10 10 5 5")),
        "bad_text": face_prompt(precomputed("ints.npy", "1 2 3 4 5 6 7 8 9 ten", bbox="1 2 3")),
        "bad_files": face_prompt(precomputed("two.safetensors", keypoint_text(kps)),
                                 ("7", PRECOMPUTED, {**precomputed("broken.npy", keypoint_text(kps))[2]}),
                                 ("8", PRECOMPUTED, {**precomputed("../portrait.npy", keypoint_text(kps))[2]})),
        "zeros": face_prompt(precomputed("zeros.npy", keypoint_text(kps))),
        "missing": face_prompt(precomputed("gone.npy", keypoint_text(kps))),
    }
    out = tmp_path_factory.mktemp("face-input-out")
    reports = run_engine(engine_base, prompts, out)
    pixels = {path.stem: Image.fromarray(np.load(path)) for path in out.glob("*.npy")}
    return SimpleNamespace(reports=reports, pixels=pixels, given=given)


def demo_face(analyzer, image: Image.Image, pose: Image.Image | None = None):
    """What the demo takes, worked out here from the analyser's faces: the largest face of the resized
    reference, the last face of the resized pose photo."""
    from pipelines.local.instantid.conditioning import demo_resize

    resized = demo_resize(image)
    largest = sorted(analyzer.analyze(resized), key=lambda f: f.area)[-1]
    placed, canvas = largest, resized
    if pose is not None:
        canvas = demo_resize(pose)
        placed = analyzer.analyze(canvas)[-1]
    return largest.embedding, placed.kps, placed.bbox, canvas.size


def assert_face_equals(found: dict, embedding, kps, bbox, size):
    assert found["type"] == "FaceConditioning" and found["dtypes"] == ["float32", "float32"]
    assert np.array_equal(np.float32(found["embedding"]), embedding)
    assert np.array_equal(np.float32(found["kps"]), kps)
    assert (found["bbox"] is None and bbox is None) or np.array_equal(np.float32(found["bbox"]), bbox)
    assert tuple(found["size"]) == tuple(size)


@pytest.mark.parametrize("case", ["reference", "posed"])
def test_the_face_node_gives_the_face_the_all_in_one_path_prepares(engine, analyzer, case):
    from pipelines.local.instantid.pipeline import InstantIDPipeline

    report = engine.reports[case]
    assert report["valid"] and report["success"], report
    reference = engine.pixels[f"{case}-4_reference"]
    pose = engine.pixels.get(f"{case}-4_pose")
    assert np.array_equal(np.asarray(reference), np.asarray(PORTRAIT))        # LoadImage gave the PNG's pixels
    expected = demo_face(analyzer, reference, pose)
    assert_face_equals(report["faces"]["4"], *expected)
    # the all-in-one backend's own call (LocalInstantID.prepare → InstantIDPipeline.face_from_images)
    pipeline_face = InstantIDPipeline.face_from_images(SimpleNamespace(faces=analyzer), reference, pose)
    assert_face_equals(report["faces"]["4"], pipeline_face.embedding, pipeline_face.kps, pipeline_face.bbox,
                       pipeline_face.size)
    if case == "posed":
        assert expected[3] == (960, 1280) and not np.array_equal(expected[1], demo_face(analyzer, reference)[1])


def test_no_face_found_is_a_clear_error(engine):
    assert engine.reports["no_face"]["errors"] == [
        "no face found in the reference image (320x240); use a photo where the face is clearly visible and faces "
        "the camera"]
    assert engine.reports["pose_no_face"]["errors"] == [
        "no face found in the pose image (320x240); use a photo with a clearly visible face"]


def test_a_precomputed_face_is_the_numbers_given(engine):
    given = engine.given
    report = engine.reports["precomputed"]
    assert report["success"], report
    assert_face_equals(report["faces"]["6"], given["embedding"], given["kps"], given["bbox"], (1280, 960))
    # a .safetensors file in a sub-folder, its 'embedding' tensor; keypoints as plain numbers; no box
    report = engine.reports["safetensors"]
    assert report["success"], report
    assert_face_equals(report["faces"]["6"], given["embedding"], given["kps"], None, (96, 64))


def node_error_lines(report: dict, node_id: str = "6") -> list[str]:
    assert not report["valid"]
    [error] = report["node_errors"][node_id]["errors"]          # once for the node, a line per input
    return error["details"].splitlines()


def test_bad_shapes_are_refused_at_queue_time_by_name(engine):
    assert node_error_lines(engine.reports["bad_shapes"]) == [
        "embedding: short.npy holds an array of shape [256]; an ArcFace embedding of 512 values is needed (shape "
        "[512] or [1, 512], as antelopev2's recognizer gives it)",
        "keypoints: 8 numbers given; 10 are needed (five x, y points in pixels: left eye, right eye, nose, left and "
        "right mouth corner)",
        "bbox: the box [10.0, 10.0, 5.0, 5.0] is empty; x2 must be above x1 and y2 above y1 (x1, y1, x2, y2)"]
    assert node_error_lines(engine.reports["bad_text"]) == [
        "embedding: ints.npy holds integers; an ArcFace embedding is floating point",
        "keypoints: 'ten' is not a number; give 10 numbers (five x, y points in pixels: left eye, right eye, nose, "
        "left and right mouth corner)",
        "bbox: 3 numbers given; 4 are needed (x1, y1, x2, y2 in pixels)"]


def test_unusable_embedding_files_are_refused_by_name(engine):
    report = engine.reports["bad_files"]
    [two] = node_error_lines(report, "6")
    assert two == ("embedding: two.safetensors holds 2 tensors (a, b); save one tensor, or name the embedding "
                   "'embedding'")
    [broken] = node_error_lines(report, "7")
    assert broken.startswith("embedding: cannot read broken.npy (")
    [outside] = node_error_lines(report, "8")
    assert outside.startswith("embedding: '../portrait.npy' is not a .npy or .safetensors file in the input folder "
                              "(it steps out of the folder with '..')")


def test_a_file_that_is_not_there_queues_and_is_reported_when_the_node_runs(engine):
    # as the loaders: a graph whose unchosen branch lacks the file still queues
    report = engine.reports["missing"]
    assert report["valid"], report
    [error] = report["errors"]
    assert error.startswith("embedding: 'gone.npy' is not a .npy or .safetensors file in ")
    # the no-face embedding passes the header check, and is refused when read
    assert engine.reports["zeros"]["errors"] == [
        "embedding: zeros.npy is all zeros; that is the no-face embedding, not an identity"]


# ---- a real ComfyUI: the all-in-one node's face input ----------------------------------------------

@pytest.fixture(scope="module")
def photos(comfyui):
    """Uploaded as PNG: a portrait (its own faces, so no other test has cached its face tokens) and a
    photo without a face."""
    portrait = face_models.scene((30, 40, 80, 90), (160, 50, 290, 190), size=(320, 240))
    return SimpleNamespace(portrait=comfyui.upload_image(png(portrait), "face_input_portrait.png"),
                           no_face=comfyui.upload_image(png(NO_FACE), "face_input_no_face.png"))


def local_graph(comfyui, photos, generators: dict, **extra) -> dict:
    from test_comfyui_instantid import graph, local_node

    prompt = graph(comfyui, photos.portrait, {node_id: local_node(seed=21, **changes)
                                             for node_id, changes in generators.items()})
    prompt["5"] = {"class_type": "LoadImage", "inputs": {"image": photos.no_face}}
    prompt.update(extra)
    return prompt


def test_the_local_node_takes_an_optional_face_and_keeps_its_segmind_sockets(comfyui):
    info = comfyui.get_json("/object_info")
    layout = socket_layout(info, LOCAL)
    assert layout[-1] == ("face", "CHARID_INSTANTID_FACE") and "face" in info[LOCAL]["input"]["optional"]
    assert info[FACE]["output"] == info[PRECOMPUTED]["output"] == ["CHARID_INSTANTID_FACE"]
    assert [name for name, _ in socket_layout(info, PRECOMPUTED)] == ["embedding", "keypoints", "width", "height",
                                                                     "bbox"]


def test_a_face_from_either_face_node_gives_the_image_of_the_analysed_reference_bit_for_bit(comfyui, photos):
    from pipelines.local.faces import FaceAnalyzer
    from pipelines.local.instantid.face_input import face_from_images

    # the analysed face, computed here from the pixels LoadImage gives, saved as a user would save it
    loaded = Image.open(io.BytesIO(comfyui.loaded_image_png(photos.portrait))).convert("RGB")
    face = face_from_images(FaceAnalyzer(comfyui.base / "models" / "insightface" / "models" / "antelopev2"), loaded)
    np.save(comfyui.base / "input" / "face_input_portrait.npy", face.embedding)

    nodes = {"4": {"class_type": FACE, "inputs": {"face_models": ["9", 0], "reference": ["1", 0]}},
             "6": {"class_type": PRECOMPUTED, "inputs": {
                 "embedding": "face_input_portrait.npy", "keypoints": keypoint_text(face.kps),
                 "width": face.size[0], "height": face.size[1], "bbox": box_text(face.bbox)}}}
    prompt = local_graph(comfyui, photos, {"2": {}, "3": {"face": ["4", 0]}, "7": {"face": ["6", 0]},
                                           "8": {"face": ["4", 0], "prompt": "a man by the sea"}}, **nodes)
    prompt["7"]["inputs"]["reference"] = ["5", 0]        # a photo without a face: never analysed with a face given
    from test_comfyui_instantid import outputs

    entry = comfyui.run(prompt)
    [analysed], analysed_info = outputs(comfyui, entry, "2")
    [from_node], node_info = outputs(comfyui, entry, "3")
    [from_numbers], numbers_info = outputs(comfyui, entry, "7")
    _, same_face_info = outputs(comfyui, entry, "8")
    assert analysed.size == (96, 64) and np.asarray(analysed).std() > 1
    assert np.array_equal(np.asarray(from_node), np.asarray(analysed))
    assert np.array_equal(np.asarray(from_numbers), np.asarray(analysed))
    assert "face" not in analysed_info
    assert node_info["face"] == numbers_info["face"] == "input (the reference was not analysed)"
    assert analysed_info["face_box"] == node_info["face_box"] == numbers_info["face_box"]
    # one face (the server's analysis, InstantID Face's, the numbers saved from it): its tokens are
    # computed once for the four generators, and each info counts only its own run's calls, though the
    # generators queued for the device together
    runs = [info["model_calls"]["resampler"] for info in (analysed_info, node_info, numbers_info, same_face_info)]
    assert sorted(runs) == [0, 0, 0, 1], runs
    assert all(info["model_calls"]["unet"] == 2 for info in (analysed_info, node_info, numbers_info, same_face_info))


def test_a_face_without_its_box_needs_enhance_face_region_off(comfyui, photos):
    from test_comfyui_instantid import outputs

    np.save(comfyui.base / "input" / "face_input_random.npy", np.random.default_rng(5).standard_normal(512) * 20)
    node = {"class_type": PRECOMPUTED, "inputs": {"embedding": "face_input_random.npy",
                                                   "keypoints": "30 24 60 24 45 34 34 46 56 46", "width": 96,
                                                   "height": 64, "bbox": ""}}
    entry = comfyui.run(local_graph(comfyui, photos, {"2": {"face": ["6", 0]}}, **{"6": node}))
    assert error_message(entry).strip() == (
        "InstantID (local): enhance_face_region needs the face's box and this face has none; give the box (bbox) "
        "to InstantID Face (precomputed), or turn enhance_face_region off")
    entry = comfyui.run(local_graph(comfyui, photos, {"2": {"face": ["6", 0], "enhance_face_region": False,
                                                            "width": 0, "height": 0, "steps": 1}}, **{"6": node}))
    [image], info = outputs(comfyui, entry, "2")
    assert image.size == (96, 64) and info["size"] == [96, 64] and info["face_box"] is None   # 0: the face's size


def test_a_face_and_a_pose_photo_together_are_refused(comfyui, photos):
    node = {"class_type": FACE, "inputs": {"face_models": ["9", 0], "reference": ["1", 0]}}
    entry = comfyui.run(local_graph(comfyui, photos, {"2": {"face": ["4", 0], "pose_image": ["1", 0]}}, **{"4": node}))
    assert error_message(entry).strip() == (
        "InstantID (local): connect either face or pose_image, not both: the face already carries where it goes "
        "(give the pose photo to the InstantID Face node's pose input)")
