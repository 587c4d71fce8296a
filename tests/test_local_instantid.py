"""Local InstantID on tiny models (CPU, fp32, hub offline): fidelity to the reference implementation,
the demo's face preparation, every file layout users have, strict loading, styles, concurrency."""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import face_models
import instantid_fidelity as cases
import instantid_models as tiny
from instantcharacter_models import comfy_tokenizer_dirs
from pipelines.local.instantid.conditioning import FaceConditioning, demo_resize, face_mask, keypoint_image
from pipelines.local.instantid.loading import InstantIDFiles, ModelFileError, build_pipeline
from pipelines.local.instantid.prompts import chunks, parse_weights, tokens_with_weights
from pipelines.local.instantid.styles import STYLES, UnknownStyleError, apply_style

REFERENCE = json.loads((tiny.REPO_ROOT / "tests" / "data" / "instantid_reference.json").read_text())
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny.build_tiny_instantid(tmp_path_factory.mktemp("tiny-instantid"))


@pytest.fixture(scope="module")
def antelopev2(tmp_path_factory):
    return face_models.antelopev2(tmp_path_factory.mktemp("insightface") / "models" / "antelopev2")


def pipeline_files(files, **changes) -> InstantIDFiles:
    values = dict(sdxl=files.checkpoint, identitynet=files.controlnet_file, adapter=files.adapter,
                  clip_tokenizer=comfy_tokenizer_dirs()[0], lcm_lora=files.lcm_lora)
    values.update(changes)
    return InstantIDFiles(**values)


@pytest.fixture(scope="module")
def pipe(files, antelopev2):
    return build_pipeline(pipeline_files(files, antelopev2=antelopev2))


def case_face() -> FaceConditioning:
    return FaceConditioning(cases.face_embedding(), cases.KPS, cases.CANVAS, cases.BBOX)


def run_case(pipe, case: cases.Case, output: str, face: FaceConditioning | None = None, **changes):
    options = dict(seed=case.seed, steps=case.steps, guidance=case.guidance, identity_strength=case.identity_strength,
                   adapter_strength=case.adapter_strength, enhance_face_region=case.enhance_face_region,
                   scheduler=case.scheduler)
    options.update(changes)
    return pipe.generate(face or case_face(), case.prompt, case.negative_prompt, output=output, **options)


def difference(a, b) -> float:
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


# ---- fidelity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(cases.CASES))
def test_same_weights_and_seed_give_the_reference_output(pipe, name):
    """Recorded from instantX-research/InstantID itself (scripts/record_instantid_reference.py)."""
    recorded = REFERENCE["cases"][name]
    latents = run_case(pipe, cases.CASES[name], "latent")
    assert difference(latents, cases.as_array(recorded["latents"])) < TOLERANCE
    image = run_case(pipe, cases.CASES[name], "pt")
    assert difference(image, cases.unpacked(recorded["image"])) < TOLERANCE


@pytest.mark.parametrize("change", [
    dict(enhance_face_region=True), dict(adapter_strength=0.5), dict(identity_strength=0.5), dict(seed=43),
    dict(guidance=4.0), dict(steps=5)])
def test_each_setting_moves_the_output_far_beyond_the_tolerance(pipe, change):
    """So the fidelity comparison would catch a dropped mask, a swapped scale or another noise draw."""
    case = cases.CASES["watercolor_style"]
    recorded = cases.as_array(REFERENCE["cases"]["watercolor_style"]["latents"])
    assert difference(run_case(pipe, case, "latent", **change), recorded) > 100 * TOLERANCE


def test_the_face_and_the_prompt_weights_reach_the_output(pipe):
    case = cases.CASES["watercolor_style"]
    recorded = cases.as_array(REFERENCE["cases"]["watercolor_style"]["latents"])
    other_face = FaceConditioning(cases.face_embedding()[::-1].copy(), cases.KPS, cases.CANVAS, cases.BBOX)
    assert difference(run_case(pipe, case, "latent", face=other_face), recorded) > 100 * TOLERANCE
    moved_kps = FaceConditioning(cases.face_embedding(), cases.KPS + 8, cases.CANVAS, cases.BBOX)
    assert difference(run_case(pipe, case, "latent", face=moved_kps), recorded) > 100 * TOLERANCE
    unweighted = cases.Case(case.prompt, case.negative_prompt.replace(":1.2", ""), case.seed)
    assert difference(run_case(pipe, unweighted, "latent"), recorded) > 100 * TOLERANCE


def test_the_keypoint_image_is_drawn_as_the_reference_draws_it():
    drawn = np.asarray(keypoint_image(case_face()))
    assert np.array_equal(drawn, cases.unpacked(REFERENCE["keypoint_image"]))


@pytest.mark.parametrize("index", range(len(cases.RESIZE_INPUTS)))
def test_the_demo_resize_rule_gives_the_same_pixels(index):
    recorded = REFERENCE["resize_img"][index]
    resized = demo_resize(cases.gradient_photo(*recorded["input"]))
    assert list(resized.size) == recorded["output"]
    assert all(side % 64 == 0 for side in resized.size) and max(resized.size) <= 1280
    assert hashlib.sha256(resized.tobytes()).hexdigest() == recorded["sha256"]


def test_the_first_image_of_a_batch_is_the_single_image_of_that_seed(pipe):
    case = cases.CASES["face_region"]
    batch = run_case(pipe, case, "latent", num_images=2)
    single = run_case(pipe, case, "latent")
    assert batch.shape[0] == 2
    assert difference(batch[:1], single) < TOLERANCE
    assert difference(batch[1:], single) > 100 * TOLERANCE


# ---- prompts and styles ---------------------------------------------------------------------------

def test_prompt_weights_follow_the_usual_syntax():
    assert parse_weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0), ("house", pytest.approx(1.573)), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", pytest.approx(1.4641)), (".", 1.1)]
    assert parse_weights(r"\(literal\]") == [("(literal]", 1.0)]
    assert parse_weights("x BREAK y") == [("x", 1.0), ("BREAK", -1), ("y", 1.0)]
    assert parse_weights("") == [("", 1.0)]


def test_long_prompts_are_cut_into_framed_chunks_of_75():
    tokenizer, _ = tiny.tokenizers()
    ids, weights = tokens_with_weights(tokenizer, cases.LONG_PROMPT)
    assert len(ids) > 150
    pieces = chunks(list(ids), list(weights), tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert [len(piece) for piece, _ in pieces] == [77, 77, len(ids) - 150 + 2]
    assert all(piece[0] == tokenizer.bos_token_id and piece[-1] == tokenizer.eos_token_id for piece, _ in pieces)
    exact = chunks(list(range(75)), [1.0] * 75, 0, 1)        # exactly 75 tokens: an empty final chunk follows
    assert [len(piece) for piece, _ in exact] == [77, 2]


def test_the_nine_styles_carry_the_segmind_names_and_wrap_the_prompt():
    from pipelines.cloud.segmind import KNOWN_STYLES

    assert len(STYLES) == 9 and set(STYLES) <= set(KNOWN_STYLES)
    prompt, negative = apply_style("Watercolor", "a man in a garden", "(blurry:0.8)")
    assert (prompt, negative) == cases.WATERCOLOR
    assert apply_style("(No style)", "a cat", "dog") == ("a cat", " dog")
    with pytest.raises(UnknownStyleError, match="'Art Nouveau' is not one of the InstantID templates: \\(No style\\)"):
        apply_style("Art Nouveau", "a cat")


# ---- faces from images ---------------------------------------------------------------------------

def test_faces_from_photos_follow_the_demo(pipe):
    reference = face_models.scene((40, 30, 90, 80), (150, 60, 300, 210))       # two faces: the larger is used
    pose = face_models.scene((200, 20, 280, 100), size=(300, 400))
    resized_reference, resized_pose = demo_resize(reference), demo_resize(pose)
    faces = pipe.faces.analyze(resized_reference)
    largest = sorted(faces, key=lambda f: f.area)[-1]

    alone = pipe.face_from_images(reference)
    assert alone.size == resized_reference.size == (1280, 960)
    assert np.array_equal(alone.embedding, largest.embedding) and np.array_equal(alone.kps, largest.kps)

    posed = pipe.face_from_images(reference, pose)
    last = pipe.faces.analyze(resized_pose)[-1]
    assert posed.size == resized_pose.size == (960, 1280)
    assert np.array_equal(posed.embedding, largest.embedding)           # identity from the reference
    assert np.array_equal(posed.kps, last.kps) and np.array_equal(posed.bbox, last.bbox)


def test_a_pose_photo_without_a_face_is_a_clear_error(pipe):
    from pipelines.local.faces import FaceAnalysisError

    with pytest.raises(FaceAnalysisError, match=r"no face found in the pose image \(300x400\)"):
        pipe.face_from_images(face_models.scene((150, 60, 300, 210)), face_models.scene(size=(300, 400)))


def test_a_chosen_size_places_the_face_by_cover_scaling_without_stretching():
    face = case_face()
    placed = face.on_canvas(192, 192)                 # 96×64 → scale 3, 96 px cut from each side
    assert np.allclose(placed.kps, cases.KPS * 3 + [-48, 0])
    assert np.allclose(placed.bbox, cases.BBOX * 3 + [-48, 0, -48, 0])
    assert face.on_canvas(*cases.CANVAS) is face


def test_the_face_mask_is_clamped_to_the_canvas():
    mask = face_mask(np.array([-5.7, -3.2, 10.9, 8.1]), (16, 12))
    assert mask.shape == (12, 16) and mask.sum() == 10 * 8 and mask[0, 0] == 1 and mask[8, 10] == 0


def test_a_precomputed_face_is_checked():
    with pytest.raises(ValueError, match="has 128 values; antelopev2's ArcFace gives 512"):
        FaceConditioning(np.zeros(128), cases.KPS, cases.CANVAS)
    with pytest.raises(ValueError, match="five \\(x, y\\) points"):
        FaceConditioning(cases.face_embedding(), cases.KPS[:3], cases.CANVAS)


def test_enhance_face_region_needs_a_box_and_lcm_needs_its_lora(files, pipe):
    face = FaceConditioning(cases.face_embedding(), cases.KPS, cases.CANVAS)
    with pytest.raises(ValueError, match="needs the face box"):
        pipe.generate(face, "a man", enhance_face_region=True, steps=1)
    without_lcm = build_pipeline(pipeline_files(files, lcm_lora=None))
    with pytest.raises(ValueError, match="LCM-LoRA"):
        without_lcm.generate(case_face(), "a man", scheduler="lcm", steps=1)


def test_a_chosen_size_generates_at_that_size(pipe):
    image = pipe.generate(case_face(), "a man", width=64, height=64, steps=1, output="pt")
    assert tuple(image.shape) == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="multiples of 8"):
        pipe.generate(case_face(), "a man", width=60, height=64, steps=1)


# ---- loading -------------------------------------------------------------------------------------

def test_the_diffusers_folder_and_the_identitynet_folder_load_to_the_same_pipeline(files, pipe):
    other = build_pipeline(pipeline_files(files, sdxl=files.sdxl_folder, identitynet=files.controlnet_folder))
    case = cases.CASES["face_region"]
    assert difference(run_case(other, case, "latent"), run_case(pipe, case, "latent")) < 1e-5
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(pipe.models, name).state_dict(), getattr(other.models, name).state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine), name


def test_an_sdxl_diffusers_folder_is_used_whole_its_tokenizer_and_scheduler_before_comfyuis(files, pipe, tmp_path):
    """A folder whose tokenizer and scheduler differ from ComfyUI's copies is read with its own; a folder
    without a tokenizer/ falls back to ComfyUI's copy."""
    import shutil

    own = tmp_path / "sdxl-own"
    shutil.copytree(files.sdxl_folder, own)
    path = own / "tokenizer" / "tokenizer.json"                 # two words trade their ids in the folder's copy
    content = json.loads(path.read_text())
    vocab = content["model"]["vocab"]
    vocab["man</w>"], vocab["garden</w>"] = vocab["garden</w>"], vocab["man</w>"]
    path.write_text(json.dumps(content))
    scheduler_file = own / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text())
    scheduler["timestep_spacing"] = "linspace"
    scheduler_file.write_text(json.dumps(scheduler))
    honoured = build_pipeline(pipeline_files(files, sdxl=own))
    assert honoured.models.tokenizer("a man").input_ids == pipe.models.tokenizer("a garden").input_ids
    assert honoured.models.tokenizer("a man").input_ids != pipe.models.tokenizer("a man").input_ids
    assert honoured.models.scheduler_config["timestep_spacing"] == "linspace" != pipe.models.scheduler_config.get(
        "timestep_spacing")
    bare = tmp_path / "sdxl-bare"
    shutil.copytree(files.sdxl_folder, bare)
    shutil.rmtree(bare / "tokenizer")
    fallback = build_pipeline(pipeline_files(files, sdxl=bare))
    assert str(fallback.models.tokenizer.name_or_path) == str(comfy_tokenizer_dirs()[0])


@pytest.mark.parametrize(("part", "writer", "message"), [
    ("identitynet", lambda tmp: tmp / "lora.safetensors", "lora.safetensors is a LoRA; identitynet needs InstantID's "
                                                         "IdentityNet"),
    ("adapter", lambda tmp: tmp / "ic.bin", "ic.bin is the InstantCharacter adapter; adapter needs InstantID's "
                                            "ip-adapter.bin"),
    ("lcm_lora", lambda tmp: tmp / "sd.safetensors", "sd.safetensors is an SDXL checkpoint; lcm_lora needs the "
                                                     "LCM-LoRA for SDXL"),
])
def test_a_file_of_another_kind_is_named_from_its_header_before_anything_loads(files, tmp_path, part, writer, message):
    import shutil

    import instantcharacter_models

    from pipelines.local.instantid.loading import instantid_problems

    target = writer(tmp_path)
    if target.name == "lora.safetensors":
        shutil.copy(files.lcm_lora, target)
    elif target.name == "ic.bin":
        torch.save(instantcharacter_models.adapter_state(), target)
    else:
        shutil.copy(files.checkpoint, target)
    problems = instantid_problems(sdxl=files.checkpoint, **{part: target})
    assert [(found, text.startswith(message)) for found, text in problems] == [(part, True)], problems
    with pytest.raises(ModelFileError, match=message):
        pipeline_files(files, **{part: target}).check()


def test_the_official_adapter_layout_loads_at_its_real_size():
    """Key names and shapes of the released ip-adapter.bin, read off the reference's own modules."""
    from diffusers import UNet2DConditionModel

    from pipelines.local.instantid.adapter import build_face_adapter
    from pipelines.local.instantid.loading import shipped_config

    layout = REFERENCE["official_layout"]
    state = {f"{group}.{key}": torch.empty(shape, device="meta")
             for group, shapes in layout.items() for key, shape in shapes.items()}
    with torch.device("meta"):
        unet = UNet2DConditionModel(**shipped_config("sdxl_unet.json"))
    adapter = build_face_adapter(state, unet)
    size = adapter.resampler.size
    assert (size.dim, size.depth, size.heads, size.num_queries, size.output_dim) == (1280, 4, 20, 16, 2048)
    assert sum(1 for name in adapter.processors if name.endswith("attn2.processor")) == 70


def write_checkpoint(path, state):
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return path


@pytest.mark.parametrize("prefixes, kind", [
    (("model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x"),
     "a Stable Diffusion 1.x model"),
    (("model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.transformer.x"),
     "a Stable Diffusion 2.x model"),
    (("double_blocks.0.img_attn.qkv.weight",), "a FLUX model"),
    (("model.diffusion_model.label_emb.0.0.weight", "conditioner.embedders.0.model.x"),
     "an SDXL refiner"),
    (("model.diffusion_model.input_blocks.0.0.weight",), "a diffusion model without SDXL's text encoders"),
])
def test_a_checkpoint_that_is_not_sdxl_is_refused_by_name_before_loading(files, tmp_path, prefixes, kind):
    path = write_checkpoint(tmp_path / "other.safetensors", {key: torch.zeros(1) for key in prefixes})
    with pytest.raises(ModelFileError, match=f"other.safetensors is {kind}.*InstantID needs an SDXL checkpoint"):
        build_pipeline(pipeline_files(files, sdxl=path))


def adapter_with(files, tmp_path, change):
    state = torch.load(files.adapter, map_location="cpu")
    change(state)
    path = tmp_path / "ip-adapter.bin"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda s: s["ip_adapter"].pop("1.to_k_ip.weight"), "missing key ip_adapter.1.to_k_ip.weight|lacks.*1.to_k_ip"),
    (lambda s: s["image_proj"].update({"proj_out.weight": torch.zeros(64, 128), "proj_out.bias": torch.zeros(64),
                                       "norm_out.weight": torch.ones(64), "norm_out.bias": torch.zeros(64)}),
     "the face tokens (of ip-adapter.bin )?are 64 wide; this UNet's cross-attention takes 128"),
    (lambda s: s["ip_adapter"].__setitem__("3.to_v_ip.weight", torch.zeros(5, 128)), "3.to_v_ip.weight"),
    (lambda s: s["ip_adapter"].__setitem__("999.to_k_ip.weight", torch.zeros(64, 128)), "999.to_k_ip.weight"),
    (lambda s: s["image_proj"].pop("norm_out.weight"), "norm_out.weight"),
])
def test_a_missing_extra_or_misshaped_adapter_tensor_is_named(files, tmp_path, change, message):
    path = adapter_with(files, tmp_path, change)
    with pytest.raises((ModelFileError, ValueError), match=message):
        build_pipeline(pipeline_files(files, adapter=path))


def test_an_identitynet_that_does_not_fit_is_named(files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(files.controlnet_file))
    state.pop("controlnet_mid_block.weight")
    path = write_checkpoint(tmp_path / "identitynet.safetensors", state)
    with pytest.raises(ModelFileError, match="IdentityNet: identitynet.safetensors lacks 'controlnet_mid_block.weight'"):
        build_pipeline(pipeline_files(files, identitynet=path))


def test_missing_files_are_named_before_anything_loads(files, tmp_path):
    with pytest.raises(ModelFileError, match="InstantID face adapter: .*nothing.bin does not exist"):
        build_pipeline(pipeline_files(files, adapter=tmp_path / "nothing.bin"))
    with pytest.raises(ModelFileError, match="IdentityNet: .*absent does not exist"):
        build_pipeline(pipeline_files(files, identitynet=tmp_path / "absent"))
    with pytest.raises(ModelFileError, match="SDXL: .*gone.safetensors does not exist"):
        build_pipeline(pipeline_files(files, sdxl=tmp_path / "gone.safetensors"))
    with pytest.raises(Exception, match="lacks scrfd_10g_bnkps.onnx and glintr100.onnx"):
        build_pipeline(pipeline_files(files, antelopev2=tmp_path))


def test_a_truncated_checkpoint_says_so(files, tmp_path):
    broken = tmp_path / "sdxl.safetensors"
    broken.write_bytes(files.checkpoint.read_bytes()[: 4096])
    with pytest.raises(ModelFileError, match="cannot read sdxl.safetensors .*download it again"):
        build_pipeline(pipeline_files(files, sdxl=broken))


def test_an_lcm_lora_in_another_layout_is_named(files, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other-lora.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 64),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(64, 4)}, str(path))
    with pytest.raises(ModelFileError, match="original SDXL layer names"):
        build_pipeline(pipeline_files(files, lcm_lora=path))


# ---- runs ----------------------------------------------------------------------------------------

def test_a_new_seed_encodes_nothing_again(files):
    fresh = build_pipeline(pipeline_files(files))
    case = cases.CASES["watercolor_style"]
    run_case(fresh, case, "latent", steps=1)
    before = dict(vars(fresh.counters))
    run_case(fresh, case, "latent", steps=1, seed=99)
    after = vars(fresh.counters)
    assert after["text_encoders"] == before["text_encoders"] and after["resampler"] == before["resampler"]
    assert after["unet"] == before["unet"] + 1


@pytest.mark.parametrize("mode", ["model_offload", "group_offload"])
def test_every_memory_mode_gives_the_same_image(files, pipe, mode):
    other = build_pipeline(pipeline_files(files), memory=mode)
    case = cases.CASES["face_region"]
    assert difference(run_case(other, case, "latent"), run_case(pipe, case, "latent")) < 1e-6


def test_two_pipelines_running_at_once_do_not_see_each_others_face_region(files):
    """The reference keeps the face-region mask in a module global; here it travels with each call."""
    first, second = build_pipeline(pipeline_files(files)), build_pipeline(pipeline_files(files))
    masked, plain = cases.CASES["face_region"], cases.CASES["no_guidance"]
    options = dict(steps=6)
    expected = {"masked": run_case(first, masked, "latent", **options),
                "plain": run_case(second, plain, "latent", adapter_strength=1.3, **options)}
    results, errors = {}, []
    start = threading.Barrier(2)

    def run(name, pipeline, case, **extra):
        try:
            start.wait()
            results[name] = run_case(pipeline, case, "latent", **options, **extra)
        except Exception as exc:            # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("masked", first, masked)),
               threading.Thread(target=run, args=("plain", second, plain), kwargs=dict(adapter_strength=1.3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert difference(results["masked"], expected["masked"]) < 1e-6
    assert difference(results["plain"], expected["plain"]) < 1e-6


def test_the_fast_mode_leaves_the_unet_as_it_was(pipe):
    case = cases.CASES["no_guidance"]
    before = run_case(pipe, case, "latent")
    run_case(pipe, cases.CASES["lcm_fast_mode"], "latent")
    assert difference(run_case(pipe, case, "latent"), before) == 0


def test_progress_reports_every_step_and_an_exception_there_stops_the_run(pipe):
    seen = []

    class Stop(Exception):
        pass

    def on_step(info):
        seen.append((info.step, info.total, tuple(info.denoised.shape)))
        if info.step == 2:
            raise Stop

    with pytest.raises(Stop):
        pipe.generate(case_face(), "a man", steps=4, on_step=on_step)
    assert seen == [(1, 4, (1, 4, 8, 12)), (2, 4, (1, 4, 8, 12))]
    image = pipe.generate(case_face(), "a man", steps=1)                   # the lock was released
    assert isinstance(image[0], Image.Image) and image[0].size == cases.CANVAS


# ---- the backend behind the shared contract ---------------------------------------------------------

def portrait_request(**changes):
    from pipelines.contract import GenerationRequest

    values = dict(reference=face_models.scene((120, 50, 230, 170)), prompt="a man in a garden", width=96, height=64,
                  seed=3, steps=3, guidance=5.0, identity_strength=0.8,
                  extras={"style": "Watercolor", "adapter_strength": 0.7, "enhance_face_region": True})
    values.update(changes)
    return GenerationRequest(**values)


def test_the_backend_runs_a_request_and_reports_what_it_used(pipe):
    import asyncio

    from pipelines.contract import DetachedRunContext
    from pipelines.local.instantid.backend import LocalInstantID

    context = DetachedRunContext()
    result = asyncio.run(LocalInstantID(pipe).generate(portrait_request(), context))
    assert [image.size for image in result.images] == [(96, 64)]
    info = result.info()
    assert info["style"] == "Watercolor" and info["adapter_strength"] == 0.7 and info["size"] == [96, 64]
    assert info["backend"] == "InstantID (local)" and len(info["face_box"]) == 4
    assert context.progress == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("width, height, canvas, expected", [
    (0, 0, (1280, 960), (1280, 960)), (512, 0, (1280, 960), (512, 384)), (0, 300, (960, 1280), (224, 300)),
    (96, 64, (1280, 960), (96, 64))])
def test_a_zero_side_follows_the_photo(width, height, canvas, expected):
    from pipelines.local.instantid.backend import output_size

    assert output_size(width, height, canvas) == expected


@pytest.mark.parametrize("changes, message", [
    (dict(extras={"style": "Art Nouveau"}), "style = 'Art Nouveau' is not allowed; allowed values are '\\(No style\\)'"),
    (dict(identity_strength=1.6), "identity strength = 1.6 is not allowed; allowed range is 0–1.5"),
    (dict(width=100), "width = 100 is not allowed; allowed range is 0–2048 in multiples of 8"),
    (dict(extras={"fast_mode": True}), "fast_mode needs the LCM-LoRA for SDXL"),
])
def test_bad_requests_are_refused_before_any_work(files, changes, message):
    import asyncio

    from pipelines.contract import DetachedRunContext
    from pipelines.local.instantid.backend import LocalInstantID

    no_lcm = build_pipeline(pipeline_files(files, lcm_lora=None))
    no_lcm.faces = object()               # face analysis must not be reached
    with pytest.raises(ValueError, match=message):
        asyncio.run(LocalInstantID(no_lcm).generate(portrait_request(**changes), DetachedRunContext()))
    assert no_lcm.counters.unet == 0


def test_cancel_lands_within_a_step(pipe):
    import asyncio

    from pipelines.contract import DetachedRunContext, GenerationInterrupted
    from pipelines.local.instantid.backend import LocalInstantID

    class CancelAtTwo(DetachedRunContext):
        def interrupted(self):
            return len(self.progress) >= 2

    context = CancelAtTwo()
    before = pipe.counters.unet
    with pytest.raises(GenerationInterrupted, match="cancelled at step 2/10"):
        asyncio.run(LocalInstantID(pipe).generate(portrait_request(steps=10), context))
    assert pipe.counters.unet - before == 2


def test_the_readme_python_example_names_the_real_api():
    """The README's InstantID "From Python" snippet: every keyword it passes exists in the code it calls."""
    from pipelines.local.instantid.pipeline import InstantIDPipeline
    from readme_snippets import check_snippet

    check_snippet("instantid.loading", {"InstantIDFiles": InstantIDFiles, "build_pipeline": build_pipeline,
                                        "apply_style": apply_style, "FaceConditioning": FaceConditioning,
                                        "face_from_images": InstantIDPipeline.face_from_images,
                                        "generate": InstantIDPipeline.generate})
