"""Native InstantCharacter (nodes/native_instantcharacter.py) against the all-in-one pipeline, call by
call, on tiny models (fp32, CPU), in this process with the ComfyUI the tests use (COMFYUI_DIR).

ComfyUI's side is ComfyUI's own FLUX (its model detection on the tiny BFL file, heads set to the
tiny model's, since detection hard-codes FLUX.1's 24), wrapped in a ModelPatcher and called through
ComfyUI's sampler machinery (CFGGuider → calc_cond_batch → apply_model) with conditioning in
ComfyUI's format. The pipeline's side is its transformer with the subject processors (the path
whose images equal the reference implementation's). Both get the same packed latents, sigma
(the pipeline: timestep = sigma × 1000), text embeddings from the pipeline's encode_prompt, pooled
embedding, guidance and reference features.

Which mechanism the patch uses depends on the ComfyUI: attention patches where its FLUX blocks
call them (0.33), block replacement otherwise (0.3.75); where both exist, both are tested.
"""
from __future__ import annotations

import importlib
import sys
import types

import pytest
import torch

import instantcharacter_fidelity as cases
import instantcharacter_models as tiny
from comfyui_server import PACK_NAME, REPO_ROOT, comfyui_dir

HEIGHT, WIDTH = 48, 64
PROMPT = "a girl is playing a guitar in the street"
GUIDANCE = 3.5
WEIGHT = 0.9
# sigmas whose timestep round-trips exactly (sigma × 1000 / 1000 == sigma in fp32), so both sides'
# timestep embeddings get identical inputs: the comparison measures the patch, not that rounding
SIGMAS = (1.0, 0.75)


def tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


# ---- ComfyUI in this process, the pack's node module as ComfyUI imports it (inside its package) ----

@pytest.fixture(scope="module")
def comfy():
    path = str(comfyui_dir() / "ComfyUI")
    if path not in sys.path:
        sys.path.append(path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.samplers

    return comfy


@pytest.fixture(scope="module")
def native(comfy):
    """nodes/native_instantcharacter.py imported as ComfyUI imports the pack (a package holding nodes/
    and pipelines/), without running nodes/__init__.py, which registers every node."""
    for name, folder in (("charid_native_test", REPO_ROOT), ("charid_native_test.nodes", REPO_ROOT / "nodes")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module("charid_native_test.nodes.native_instantcharacter")


def comfyui_has_flux_attention_patches() -> bool:
    """Independent of the pack's own detection: whether this ComfyUI's FLUX code mentions them."""
    layers = comfyui_dir() / "ComfyUI" / "comfy" / "ldm" / "flux" / "layers.py"
    text = layers.read_text()
    return "attn1_patch" in text and "attn1_output_patch" in text


def mechanisms() -> list[str]:
    return ["attention_patches", "block_replacement"] if comfyui_has_flux_attention_patches() else ["block_replacement"]


# ---- the two sides ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny.build_tiny_files(tmp_path_factory.mktemp("tiny-native-instantcharacter"))


@pytest.fixture(scope="module")
def pipe(files):
    from pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles, build_pipeline

    clip_tokenizer, t5_tokenizer = tiny.comfy_tokenizer_dirs()
    return build_pipeline(InstantCharacterFiles(flux=FluxFiles(folder=files.diffusers_folder), siglip=files.siglip_folder,
                                                dinov2=files.dinov2_folder, adapter=files.adapter_bin,
                                                clip_tokenizer=clip_tokenizer, t5_tokenizer=t5_tokenizer))


@pytest.fixture(scope="module")
def comfy_flux(comfy, files):
    """ComfyUI's FLUX from the tiny BFL file, as UNETLoader builds it but for the head count."""
    import comfy.utils

    state = comfy.utils.load_torch_file(str(files.transformer_file))
    unet_config = comfy.model_detection.detect_unet_config(state, "")
    unet_config.update(num_heads=tiny.TRANSFORMER["num_attention_heads"],
                       out_channels=unet_config["in_channels"])          # detection assumes 24 heads, 16 channels
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, state)
    assert type(model_config).__name__ == "Flux"
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(state, "")
    model.load_model_weights(state, "")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


@pytest.fixture(scope="module")
def adapter(comfy, native, files):
    """The adapter as the loader node loads it: its own modules in a ModelPatcher."""
    return native.load_adapter(files.adapter_bin, torch.float32, torch.device("cpu"), torch.device("cpu"))


@pytest.fixture(scope="module")
def inputs(pipe):
    """Everything both sides get, made once."""
    from diffusers import FluxPipeline

    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, 512)
    negative_embeds, negative_pooled, _ = pipe.encode_prompt("blurry, low quality", 512)
    reference_key, features = pipe.encode_reference(cases.reference_image())
    generator = torch.Generator().manual_seed(2024)
    latents, image_ids = pipe.flux.prepare_latents(2, pipe.flux.transformer.config.in_channels // 4, HEIGHT, WIDTH,
                                                   torch.float32, torch.device("cpu"), generator)
    return types.SimpleNamespace(embeds=embeds, pooled=pooled, text_ids=text_ids, negative_embeds=negative_embeds,
                                 negative_pooled=negative_pooled, reference_key=reference_key, features=features,
                                 latents=latents, image_ids=image_ids,
                                 unpack=lambda packed: FluxPipeline._unpack_latents(packed, HEIGHT, WIDTH, 8),
                                 pack=lambda x: FluxPipeline._pack_latents(x, *x.shape))


def pipeline_denoised(pipe, inputs, sigma: float, weight: float, latents=None, embeds=None, pooled=None):
    """x - sigma × velocity of the pipeline's transformer + adapter (its own call, timestep = sigma × 1000)."""
    from pipelines.local.instantcharacter.adapter import SubjectTokens

    latents = inputs.latents[:1] if latents is None else latents
    embeds = inputs.embeds if embeds is None else embeds
    pooled = inputs.pooled if pooled is None else pooled
    sigma_tensor = torch.tensor([sigma], dtype=torch.float32)
    timestep = (sigma_tensor * 1000).expand(latents.shape[0])
    assert float(timestep[0] / 1000) == float(sigma_tensor[0])
    with torch.inference_mode():
        tokens = pipe.subject_tokens(inputs.reference_key, inputs.features, timestep[:1])
        velocity = pipe._transformer(latents, timestep, torch.full([latents.shape[0]], GUIDANCE), pooled.expand(latents.shape[0], -1),
                                     embeds.expand(latents.shape[0], -1, -1), inputs.text_ids, inputs.image_ids,
                                     {"subject": SubjectTokens(tokens, weight, embeds.shape[1])})
    return latents - sigma_tensor * velocity


def comfy_conditioning(embeds, pooled):
    return [[embeds, {"pooled_output": pooled, "guidance": GUIDANCE}]]


def comfy_denoised(comfy, model, inputs, sigma: float, latents=None, positive=None, negative=None, cfg: float = 1.0,
                   calls: list | None = None):
    """One model evaluation through ComfyUI's sampler machinery: a CFGGuider (which loads the MODEL and
    the models its patches name) runs a sampler that evaluates the model once at (latents, sigma).
    `calls`: collects each apply_model call's batch (input shape, cond_or_uncond, output) through
    ComfyUI's model_function_wrapper. → the denoised latents, packed."""
    latents = inputs.latents[:1] if latents is None else latents
    x = inputs.unpack(latents)
    model = model.clone()
    if calls is not None:
        def record(apply_model, args):
            out = apply_model(args["input"], args["timestep"], **args["c"])
            calls.append((tuple(args["input"].shape), list(args["cond_or_uncond"]), out))
            return out
        model.set_model_unet_function_wrapper(record)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive or comfy_conditioning(inputs.embeds, inputs.pooled),
                     negative or comfy_conditioning(inputs.negative_embeds, inputs.negative_pooled))
    guider.set_cfg(cfg)
    found = {}

    def evaluate_once(model_k, noise, sigmas, extra_args=None, callback=None, disable=None):
        found["denoised"] = model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        return noise

    with torch.inference_mode():
        guider.sample(torch.zeros_like(x), torch.zeros_like(x), comfy.samplers.KSAMPLER(evaluate_once),
                      torch.tensor([sigma, 0.0]), seed=0)
    return inputs.pack(found["denoised"])


def applied(native, model, adapter, inputs, weight=WEIGHT, mechanism="auto", **options):
    patched, used = native.apply_instantcharacter(model, adapter, inputs.features, weight, mechanism=mechanism, **options)
    return patched, used


# ---- which mechanism ----------------------------------------------------------------------------------

def test_the_mechanism_is_the_one_this_comfyui_supports(native, comfy_flux, adapter, inputs):
    _, used = applied(native, comfy_flux, adapter, inputs)
    assert used == mechanisms()[0]
    assert native.attention_patches_honoured(comfy_flux.model.diffusion_model) == comfyui_has_flux_attention_patches()


# ---- (a) per-call parity ----------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("mechanism", mechanisms())
def test_one_call_equals_the_pipeline_transformer_with_the_adapter(comfy, native, pipe, comfy_flux, adapter, inputs,
                                                                    mechanism, sigma, record_property):
    reference = pipeline_denoised(pipe, inputs, sigma, WEIGHT)
    patched, _ = applied(native, comfy_flux, adapter, inputs, mechanism=mechanism)
    ours = comfy_denoised(comfy, patched, inputs, sigma)
    plain = comfy_denoised(comfy, comfy_flux, inputs, sigma)
    difference = (ours - reference).abs().max().item()
    subject = (plain - reference).abs().max().item()
    record_property("max_difference", difference)
    record_property("subject_branch_effect", subject)
    print(f"\n{mechanism} sigma={sigma}: |native - pipeline| = {difference:.3g}, |unpatched - pipeline| = {subject:.3g}, "
          f"tolerance {tolerance(reference):.3g}")
    assert difference < tolerance(reference)
    assert subject > 1000 * tolerance(reference)          # the branch contributes materially


def test_the_adapter_is_loaded_with_the_model_by_comfyuis_sampler(comfy, native, comfy_flux, adapter, inputs):
    import comfy.model_management as mm

    patched, _ = applied(native, comfy_flux, adapter, inputs)
    mm.unload_all_models()
    comfy_denoised(comfy, patched, inputs, SIGMAS[0])
    assert adapter.patcher in [loaded.model for loaded in mm.current_loaded_models]
    mm.unload_all_models()
    assert adapter.patcher not in [loaded.model for loaded in mm.current_loaded_models]


# ---- (b) weight 0, the window, the original MODEL -------------------------------------------------------

@pytest.mark.parametrize("mechanism", mechanisms())
def test_weight_zero_is_the_unpatched_model_bit_for_bit(comfy, native, comfy_flux, adapter, inputs, mechanism):
    plain = comfy_denoised(comfy, comfy_flux, inputs, SIGMAS[1])
    patched, _ = applied(native, comfy_flux, adapter, inputs, weight=0.0, mechanism=mechanism)
    assert torch.equal(comfy_denoised(comfy, patched, inputs, SIGMAS[1]), plain)


@pytest.mark.parametrize("mechanism", mechanisms())
def test_outside_the_start_end_window_the_model_is_unpatched(comfy, native, pipe, comfy_flux, adapter, inputs,
                                                             mechanism):
    # FLUX's sampling (shift 1.15) puts 30 % at sigma 0.88: sigma 1.0 is before the window, 0.75 in it
    patched, _ = applied(native, comfy_flux, adapter, inputs, mechanism=mechanism, start_percent=0.3,
                         end_percent=1.0)
    assert torch.equal(comfy_denoised(comfy, patched, inputs, 1.0), comfy_denoised(comfy, comfy_flux, inputs, 1.0))
    inside = comfy_denoised(comfy, patched, inputs, 0.75)
    reference = pipeline_denoised(pipe, inputs, 0.75, WEIGHT)
    assert (inside - reference).abs().max() < tolerance(reference)


def test_apply_leaves_the_given_model_as_it_was(comfy, native, comfy_flux, adapter, inputs):
    import copy

    before = comfy_denoised(comfy, comfy_flux, inputs, SIGMAS[1])
    options = copy.deepcopy(comfy_flux.model_options)
    patches = {key: list(value) for key, value in comfy_flux.patches.items()}
    for mechanism in mechanisms():
        applied(native, comfy_flux, adapter, inputs, mechanism=mechanism)
    assert comfy_flux.model_options == options and comfy_flux.patches == patches
    assert torch.equal(comfy_denoised(comfy, comfy_flux, inputs, SIGMAS[1]), before)


def test_a_second_apply_is_refused_and_a_clone_shares_the_adapter(native, comfy_flux, adapter, inputs):
    patched, _ = applied(native, comfy_flux, adapter, inputs)
    with pytest.raises(native.NativeInstantCharacterError, match="already has InstantCharacter"):
        applied(native, patched, adapter, inputs)
    clone = patched.clone()               # deep-copies model_options: the patches share their state
    ours = [p for p in native_patches(clone)]
    assert ours and all(p.state is native_patches(patched)[0].state for p in ours)


def native_patches(model) -> list:
    options = model.model_options["transformer_options"]
    found = [p for patches in options.get("patches", {}).values() for p in patches]
    found += list(options.get("patches_replace", {}).get("dit", {}).values())
    return [p for p in found if type(p).__name__ in ("SubjectQueryPatch", "SubjectOutputPatch", "BlockReplacement")]


def test_a_model_that_is_not_flux_is_refused_by_name(native, adapter, inputs):
    class SDXL:                                     # what a MODEL's .model is for an SDXL checkpoint
        diffusion_model = torch.nn.Linear(1, 1)

    model = types.SimpleNamespace(model=SDXL(), model_options={"transformer_options": {}})
    with pytest.raises(native.NativeInstantCharacterError, match="needs a FLUX.1 model; this MODEL is SDXL"):
        applied(native, model, adapter, inputs)


# ---- (c) mutations: each known way to get it wrong breaks parity by far more than the tolerance ---------

def mutations(native):
    math = native.native_math

    def wrong_block_index(monkeypatch):
        original = math.processor_index
        monkeypatch.setattr(math, "processor_index", lambda kind, index, doubles: 3 - original(kind, index, doubles))

    def dropped_subject_norm_scale(monkeypatch, adapter):
        for processor in adapter.adapter.processors:       # the query's RMS norm without its learned scale
            norm = processor.norm_ip_q
            monkeypatch.setattr(norm, "forward", lambda x, norm=norm: x / (x.norm(2, dim=-1, keepdim=True)
                                                                           * norm.dim ** -0.5 + norm.eps))

    def dropped_block_norm_scale(monkeypatch):
        monkeypatch.setattr(native, "raw_query_from_normed", lambda normed, scale: normed)

    def projector_fed_the_sigma(monkeypatch):
        monkeypatch.setattr(math, "projector_timestep", lambda sigmas: sigmas.float())

    return {"wrong_block_index": wrong_block_index, "dropped_subject_norm_scale": dropped_subject_norm_scale,
            "dropped_block_norm_scale": dropped_block_norm_scale, "projector_fed_the_sigma": projector_fed_the_sigma}


MUTATIONS = ["wrong_block_index", "dropped_subject_norm_scale", "dropped_block_norm_scale", "projector_fed_the_sigma"]


@pytest.mark.parametrize("mutation", MUTATIONS)
@pytest.mark.parametrize("mechanism", mechanisms())
def test_a_mutated_patch_breaks_parity(comfy, native, pipe, comfy_flux, adapter, inputs, monkeypatch, mechanism,
                                       mutation, record_property):
    if mutation == "dropped_block_norm_scale" and mechanism == "block_replacement":
        pytest.skip("the block replacement reads the raw query: no block norm scale to divide out")
    sigma = SIGMAS[1]
    reference = pipeline_denoised(pipe, inputs, sigma, WEIGHT)
    mutate = mutations(native)[mutation]
    mutate(monkeypatch, adapter) if mutation == "dropped_subject_norm_scale" else mutate(monkeypatch)
    patched, _ = applied(native, comfy_flux, adapter, inputs, mechanism=mechanism)
    difference = (comfy_denoised(comfy, patched, inputs, sigma) - reference).abs().max().item()
    record_property("max_difference", difference)
    print(f"\n{mechanism} {mutation}: |native - pipeline| = {difference:.3g} (tolerance {tolerance(reference):.3g})")
    assert difference > 100 * tolerance(reference)


# ---- (d) batches ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", mechanisms())
def test_cond_and_uncond_in_one_call_equal_two_single_calls(comfy, native, pipe, comfy_flux, adapter, inputs,
                                                            mechanism):
    """CFG > 1: ComfyUI batches cond and uncond into one model call; the branch applies to both, as in
    the reference's true CFG. Each half equals the pipeline's call with that text, and the single calls."""
    sigma = SIGMAS[1]
    patched, _ = applied(native, comfy_flux, adapter, inputs, mechanism=mechanism)
    calls = []
    comfy_denoised(comfy, patched, inputs, sigma, cfg=2.5, calls=calls)
    assert [(shape[0], sorted(order)) for shape, order, _ in calls] == [(2, [0, 1])]
    (_, order, output), = calls
    halves = dict(zip(order, inputs.pack(output).chunk(2)))
    cond = comfy_denoised(comfy, patched, inputs, sigma)
    uncond = comfy_denoised(comfy, patched, inputs, sigma,
                            positive=comfy_conditioning(inputs.negative_embeds, inputs.negative_pooled))
    print(f"\n{mechanism} cond+uncond batch: {(halves[0] - cond).abs().max():.3g} / {(halves[1] - uncond).abs().max():.3g} "
          "from the single calls")
    assert (halves[0] - cond).abs().max() < tolerance(cond)
    assert (halves[1] - uncond).abs().max() < tolerance(uncond)
    reference = pipeline_denoised(pipe, inputs, sigma, WEIGHT, embeds=inputs.negative_embeds,
                                  pooled=inputs.negative_pooled)
    assert (halves[1] - reference).abs().max() < tolerance(reference)


@pytest.mark.parametrize("mechanism", mechanisms())
def test_a_latent_batch_of_two_equals_two_single_calls(comfy, native, pipe, comfy_flux, adapter, inputs, mechanism):
    sigma = SIGMAS[1]
    patched, _ = applied(native, comfy_flux, adapter, inputs, mechanism=mechanism)
    batch = comfy_denoised(comfy, patched, inputs, sigma, latents=inputs.latents)
    for index in range(2):
        single = comfy_denoised(comfy, patched, inputs, sigma, latents=inputs.latents[index:index + 1])
        assert (batch[index:index + 1] - single).abs().max() < tolerance(single)
    reference = pipeline_denoised(pipe, inputs, sigma, WEIGHT, latents=inputs.latents)
    print(f"\n{mechanism} latent batch of 2: |native - pipeline| = {(batch - reference).abs().max():.3g}")
    assert (batch - reference).abs().max() < tolerance(reference)


# ---- the nodes inside ComfyUI's own validation and execution (a separate Python) -----------------------

ENGINE = r"""
import asyncio, json, os, sys, tempfile
comfy_root, pack_root, pack_name, base, out = sys.argv[1:6]
sys.path.insert(0, comfy_root)
os.chdir(comfy_root)
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.base_directory = base
import utils.extra_config
import server
import nodes, execution
import torch
import comfy.model_detection, comfy.model_patcher, comfy.utils, folder_paths

class TinyFlux:
    # UNETLoader for the tiny FLUX file: ComfyUI's detection with the tiny model's 2 heads (it assumes 24)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (folder_paths.get_filename_list("diffusion_models"),)}}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"
    CATEGORY = "test"
    def load(self, unet_name):
        state = comfy.utils.load_torch_file(folder_paths.get_full_path("diffusion_models", unet_name))
        config = comfy.model_detection.detect_unet_config(state, "")
        config.update(num_heads=2, out_channels=config["in_channels"])
        model_config = comfy.model_detection.model_config_from_unet_config(config, state)
        model_config.set_inference_dtype(torch.float32, None)
        model = model_config.get_model(state, "")
        model.load_model_weights(state, "")
        model.latent_format.latent_channels = config["in_channels"]     # 4: KSampler sizes empty latents by it
        cpu = torch.device("cpu")
        return (comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu),)

class TinyConditioning:
    # FLUX conditioning at the tiny text width (DualCLIPLoader always builds the full-size T5)
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "test"
    def make(self, seed):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 16, 32, generator=generator),
                  {"pooled_output": torch.randn(1, 64, generator=generator), "guidance": 3.5}]],)

class KeepLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "name": ("STRING", {"default": "x"})}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "keep"
    CATEGORY = "test"
    def keep(self, samples, name):
        torch.save(samples["samples"], os.path.join(out, name + ".pt"))
        return {}

class Server:
    client_id = None
    last_node_id = None
    sockets_metadata = {}
    def __init__(self):
        self.events = []
    def send_sync(self, event, data, sid=None):
        self.events.append([event, data])
    def send_progress_text(self, text, node, sid=None):
        pass

folder = tempfile.mkdtemp()
os.symlink(pack_root, os.path.join(folder, pack_name))
asyncio.run(nodes.load_custom_node(os.path.join(folder, pack_name)))
# SamplerCustomAdvanced and its inputs, as ComfyUI loads its built-in extra nodes
asyncio.run(nodes.load_custom_node(os.path.join(comfy_root, "comfy_extras", "nodes_custom_sampler.py"),
                                   module_parent="comfy_extras"))
nodes.NODE_CLASS_MAPPINGS.update(TestTinyFlux=TinyFlux, TestTinyConditioning=TinyConditioning, TestKeepLatent=KeepLatent)
import comfy.model_management as mm

reports = []
executor = None
for case in json.loads(sys.stdin.read()):
    valid = asyncio.run(execution.validate_prompt("prompt", case["prompt"], None))
    report = {"valid": valid[0], "error": valid[1], "node_errors": valid[3]}
    if valid[0]:
        stub = server.PromptServer.instance = Server()
        executor = executor or execution.PromptExecutor(stub, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
        executor.server = stub
        executor.execute(case["prompt"], "prompt", {"client_id": "test"}, valid[2])
        report["errors"] = [data.get("exception_message") for event, data in stub.events if event == "execution_error"]
        report["executed"] = [data["node"] for event, data in stub.events if event == "executing" and data.get("node")]
        report["cached"] = [node for event, data in stub.events if event == "execution_cached" for node in data["nodes"]]
        report["loaded"] = sorted(type(m.model.model).__name__ for m in mm.current_loaded_models)
    reports.append(report)
print("REPORT " + json.dumps(reports, default=str))
"""


def native_prompt(names: dict, weight: float, seed: int, keep: str, apply: bool = True) -> dict:
    prompt = {
        "1": {"class_type": "TestTinyFlux", "inputs": {"unet_name": names["flux_file"]}},
        "2": {"class_type": "CharIDLoadInstantCharacterAdapter", "inputs": {"adapter": names["adapter"], "dtype": "fp32"}},
        "3": {"class_type": "CharIDLoadInstantCharacterEncoders",
              "inputs": {"siglip": names["siglip"], "dinov2": names["dinov2"], "dtype": "fp32"}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "reference.png"}},
        "5": {"class_type": "CharIDApplyInstantCharacter",
              "inputs": {"model": ["1", 0], "adapter": ["2", 0], "image_encoders": ["3", 0], "reference": ["4", 0],
                         "weight": weight, "start_percent": 0.0, "end_percent": 1.0}},
        "6": {"class_type": "TestTinyConditioning", "inputs": {"seed": 1}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": 1}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["5" if apply else "1", 0], "positive": ["6", 0], "negative": ["6", 0],
                         "latent_image": ["7", 0], "seed": seed, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
                         "scheduler": "simple", "denoise": 1.0}},
        "9": {"class_type": "TestKeepLatent", "inputs": {"samples": ["8", 0], "name": keep}},
    }
    return prompt


def custom_advanced_prompt(names: dict, weight: float, seed: int, keep: str) -> dict:
    """The same graph with SamplerCustomAdvanced (RandomNoise, BasicGuider, KSamplerSelect, BasicScheduler)
    in place of KSampler."""
    prompt = native_prompt(names, weight, seed, keep)
    del prompt["8"]
    prompt.update({
        "11": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "12": {"class_type": "BasicGuider", "inputs": {"model": ["5", 0], "conditioning": ["6", 0]}},
        "13": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "14": {"class_type": "BasicScheduler", "inputs": {"model": ["5", 0], "scheduler": "simple", "steps": 2,
                                                           "denoise": 1.0}},
        "15": {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["11", 0], "guider": ["12", 0], "sampler": ["13", 0], "sigmas": ["14", 0],
                          "latent_image": ["7", 0]}},
    })
    prompt["9"]["inputs"]["samples"] = ["15", 0]
    return prompt


@pytest.fixture(scope="module")
def engine_run(files, tmp_path_factory):
    """The three nodes with ComfyUI's KSampler, run by ComfyUI's executor on the tiny files in the
    real model folders (one executor, so its cache works as when a user queues again)."""
    import json
    import subprocess

    base = tmp_path_factory.mktemp("native-base")
    out = tmp_path_factory.mktemp("native-out")
    names = tiny.install_into_models(files, base / "models")
    (base / "input").mkdir()
    cases.reference_image().save(base / "input" / "reference.png")
    runs = [native_prompt(names, WEIGHT, 5, "subject"),
            native_prompt(names, WEIGHT, 6, "subject_new_seed"),
            native_prompt(names, 0.0, 5, "weight_zero"),
            native_prompt(names, WEIGHT, 5, "plain", apply=False)]
    refused = native_prompt(names, WEIGHT, 5, "refused")
    refused["10"] = {"class_type": "CharIDApplyInstantCharacter", "inputs": {**refused["5"]["inputs"], "model": ["5", 0]}}
    refused["8"]["inputs"]["model"] = ["10", 0]
    runs.append(refused)
    runs.append(custom_advanced_prompt(names, WEIGHT, 5, "custom_advanced"))
    result = subprocess.run([str(comfyui_dir() / "venv" / "bin" / "python"), "-c", ENGINE, str(comfyui_dir() / "ComfyUI"),
                             str(REPO_ROOT), PACK_NAME, str(base), str(out)],
                            input=json.dumps([{"prompt": p} for p in runs]), capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    reports = json.loads(lines[-1][len("REPORT "):])
    latents = {path.stem: torch.load(path) for path in out.glob("*.pt")}
    return reports, latents


def test_the_nodes_run_in_comfyui_with_its_ksampler(engine_run):
    reports, latents = engine_run
    for report in reports[:4]:
        assert report["valid"] and not report["errors"], report
    subject, plain = latents["subject"], latents["plain"]
    assert subject.shape == plain.shape == (1, 4, HEIGHT // 8, WIDTH // 8)
    assert (subject - plain).abs().max() > 0.01                   # the character changes the image
    assert torch.equal(latents["weight_zero"], plain)             # weight 0: the MODEL as it was
    # a new seed re-runs the sampler only: the reference is not encoded again, the MODEL not patched again
    assert {"3", "5"} <= set(reports[1]["cached"]) and "5" not in reports[1]["executed"]
    assert (latents["subject_new_seed"] - subject).abs().max() > 0.01
    assert "InstantCharacterAdapterWeights" in reports[0]["loaded"]     # loaded with the MODEL by the sampler


def test_sampler_custom_advanced_gives_what_ksampler_gives(engine_run):
    # KSampler at CFG 1 conditions on the positive only, as BasicGuider does; same seed, sampler, schedule
    reports, latents = engine_run
    assert reports[5]["valid"] and not reports[5]["errors"], reports[5]
    assert "5" in reports[5]["cached"]                                  # the Apply of the KSampler run, reused
    difference = (latents["custom_advanced"] - latents["subject"]).abs().max().item()
    print(f"SamplerCustomAdvanced vs KSampler: max |difference| {difference:.2e}")
    assert difference <= 1e-5 and (latents["custom_advanced"] - latents["plain"]).abs().max() > 0.01


def test_a_second_apply_on_the_same_model_is_refused_in_comfyui(engine_run):
    reports, latents = engine_run
    assert any("already has InstantCharacter applied" in (error or "") for error in reports[4]["errors"]), reports[4]
    assert "refused" not in latents


# ---- (e) whole image: ComfyUI's own euler sampler over every step vs the pipeline's generate ----------------

IMAGE_STEPS = 4
IMAGE_SEED = 7
IMAGE_TOLERANCE = 1e-4


def noise_for_seed(pipe, inputs, seed: int) -> torch.Tensor:
    """The pipeline's initial latents for `seed` (its prepare_latents on a seeded CPU generator), as
    ComfyUI's noise: unpacked to [1, C, H/8, W/8]."""
    generator = torch.Generator("cpu").manual_seed(seed)
    channels = pipe.flux.transformer.config.in_channels // 4
    packed, _ = pipe.flux.prepare_latents(1, channels, HEIGHT, WIDTH, torch.float32, torch.device("cpu"), generator)
    return inputs.unpack(packed)


def comfy_sampled(comfy, model, inputs, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """ComfyUI's euler KSAMPLER over `sigmas` from `noise` (empty latent, CFG 1) through a CFGGuider,
    as SamplerCustomAdvanced runs it → the latents in the pipeline's space (ComfyUI's latent format
    undone), packed."""
    guider = comfy.samplers.CFGGuider(model)
    conditioning = comfy_conditioning(inputs.embeds, inputs.pooled)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    with torch.inference_mode():
        samples = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler("euler"), sigmas, seed=0)
    return inputs.pack(model.model.process_latent_in(samples))


def decoded(pipe, packed: torch.Tensor) -> torch.Tensor:
    """The pipeline's own decode of packed latents → image in 0..1."""
    flux = pipe.flux
    with torch.inference_mode():
        latents = flux._unpack_latents(packed, HEIGHT, WIDTH, flux.vae_scale_factor)
        latents = latents / flux.vae.config.scaling_factor + flux.vae.config.shift_factor
        return flux.image_processor.postprocess(flux.vae.decode(latents, return_dict=False)[0], output_type="pt")


@pytest.fixture(scope="module")
def pipeline_image(pipe, inputs):
    """The all-in-one pipeline's generate: final latents, its sigmas (the scheduler's, with the closing 0)."""
    latents = pipe.generate(cases.reference_image(), PROMPT, width=WIDTH, height=HEIGHT, seed=IMAGE_SEED,
                            steps=IMAGE_STEPS, guidance=GUIDANCE, subject_scale=WEIGHT, output="latent")
    return types.SimpleNamespace(latents=latents, sigmas=pipe.flux.scheduler.sigmas.detach().clone().float())


def comfyui_node_module(name: str):
    """One of ComfyUI's node modules, imported with ComfyUI's own `nodes` module in place for the
    import (in this process, `nodes` on the path is the pack's folder)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    before = sys.modules.get("nodes")
    spec = importlib.util.spec_from_file_location("nodes", comfyui_dir() / "ComfyUI" / "nodes.py")
    comfyui_nodes = importlib.util.module_from_spec(spec)
    sys.modules["nodes"] = comfyui_nodes
    try:
        spec.loader.exec_module(comfyui_nodes)
        return importlib.import_module(name)
    finally:
        if before is None:
            sys.modules.pop("nodes", None)
        else:
            sys.modules["nodes"] = before


def comfyui_flux_sigmas(comfy, model, shift_at_image_size: bool) -> torch.Tensor:
    """ComfyUI's FLUX schedule: 'simple' scheduler on the MODEL's sampling, with ModelSamplingFlux at
    the image size (its defaults max/base shift 1.15/0.5) or as loaded (FLUX's default shift)."""
    if shift_at_image_size:
        model = comfyui_node_module("comfy_extras.nodes_model_advanced").ModelSamplingFlux().patch(
            model, 1.15, 0.5, WIDTH, HEIGHT)[0]
    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", IMAGE_STEPS).float()


@pytest.mark.parametrize("mechanism", mechanisms())
def test_the_whole_image_equals_the_pipelines_with_its_sigmas_and_noise(comfy, native, pipe, comfy_flux, adapter,
                                                                         inputs, pipeline_image, mechanism,
                                                                         record_property):
    patched, _ = applied(native, comfy_flux, adapter, inputs, mechanism=mechanism)
    ours = comfy_sampled(comfy, patched, inputs, noise_for_seed(pipe, inputs, IMAGE_SEED), pipeline_image.sigmas)
    latent_difference = (ours - pipeline_image.latents).abs().max().item()
    image_difference = (decoded(pipe, ours) - decoded(pipe, pipeline_image.latents)).abs().max().item()
    record_property("latent_difference", latent_difference)
    record_property("image_difference", image_difference)
    print(f"\n{mechanism} {IMAGE_STEPS} steps, sigmas {[round(s, 4) for s in pipeline_image.sigmas.tolist()]}: "
          f"|native - pipeline| latents {latent_difference:.3g}, image {image_difference:.3g}")
    assert latent_difference < IMAGE_TOLERANCE and image_difference < IMAGE_TOLERANCE
    # a different noise draw is not mistaken for the same image
    other = comfy_sampled(comfy, patched, inputs, noise_for_seed(pipe, inputs, IMAGE_SEED + 1), pipeline_image.sigmas)
    other_difference = (other - pipeline_image.latents).abs().max().item()
    print(f"{mechanism} another noise draw (seed {IMAGE_SEED + 1}): |native - pipeline| latents {other_difference:.3g}")
    assert other_difference > 1000 * IMAGE_TOLERANCE


def test_comfyuis_flux_schedule_at_the_image_size_is_the_pipelines(comfy, native, pipe, comfy_flux, adapter, inputs,
                                                                   pipeline_image, record_property):
    """KSampler's way: ModelSamplingFlux at the image size + 'simple' gives the pipeline's sigmas, so the
    same image; FLUX's default shift (no ModelSamplingFlux) gives other sigmas and differs as they do."""
    patched, _ = applied(native, comfy_flux, adapter, inputs)
    noise = noise_for_seed(pipe, inputs, IMAGE_SEED)
    at_size = comfyui_flux_sigmas(comfy, patched, shift_at_image_size=True)
    default = comfyui_flux_sigmas(comfy, patched, shift_at_image_size=False)
    figures = {}
    for name, sigmas in (("ModelSamplingFlux at the image size", at_size), ("default shift", default)):
        latents = comfy_sampled(comfy, patched, inputs, noise, sigmas)
        figures[name] = ((sigmas - pipeline_image.sigmas).abs().max().item(),
                         (latents - pipeline_image.latents).abs().max().item())
        record_property(name, figures[name])
        print(f"\n{name}: sigmas {[round(s, 4) for s in sigmas.tolist()]} (pipeline "
              f"{[round(s, 4) for s in pipeline_image.sigmas.tolist()]}), max sigma difference {figures[name][0]:.3g}, "
              f"|native - pipeline| latents {figures[name][1]:.3g}")
    sigma_gap, latent_gap = figures["ModelSamplingFlux at the image size"]
    assert sigma_gap < 1e-6 and latent_gap < IMAGE_TOLERANCE
    sigma_gap, latent_gap = figures["default shift"]
    assert sigma_gap > 0.01 and latent_gap > 100 * IMAGE_TOLERANCE
