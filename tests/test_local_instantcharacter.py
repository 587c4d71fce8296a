"""Local InstantCharacter on tiny models (CPU, fp32, hub offline): fidelity to the reference
implementation, every file layout users have, strict adapter loading, caches, memory modes."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import instantcharacter_fidelity as cases
import instantcharacter_models as tiny
from pipelines.local import adapter_files
from pipelines.local.instantcharacter import adapter as adapter_module
from pipelines.local.instantcharacter.loading import (FluxFiles, InstantCharacterFiles, ModelFileError, build_pipeline,
                                                      flux_bfl_to_diffusers, flux_config_from_bfl)

REFERENCE = json.loads((tiny.REPO_ROOT / "tests" / "data" / "instantcharacter_reference.json").read_text())
TOLERANCE = 1e-4


def test_the_hub_is_offline_for_the_whole_suite():
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tiny.build_tiny_files(tmp_path_factory.mktemp("tiny-instantcharacter"))


def pipeline_files(files, flux: FluxFiles | None = None, adapter=None, **changes) -> InstantCharacterFiles:
    clip_tokenizer, t5_tokenizer = tiny.comfy_tokenizer_dirs()
    values = dict(flux=flux or FluxFiles(folder=files.diffusers_folder), siglip=files.siglip_folder,
                  dinov2=files.dinov2_folder, adapter=adapter or files.adapter_bin, clip_tokenizer=clip_tokenizer,
                  t5_tokenizer=t5_tokenizer)
    values.update(changes)
    return InstantCharacterFiles(**values)


@pytest.fixture(scope="module")
def pipe(files):
    return build_pipeline(pipeline_files(files))


def run_case(pipe, case: cases.Case, output: str, **changes):
    options = dict(width=case.width, height=case.height, seed=case.seed, steps=case.steps, guidance=case.guidance,
                   subject_scale=case.subject_scale, true_cfg_scale=case.true_cfg_scale)
    options.update(changes)
    return pipe.generate(cases.reference_image(), case.prompt, case.negative_prompt, output=output, **options)


# ---- fidelity ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(cases.CASES))
def test_same_weights_and_seed_give_the_reference_output(pipe, name):
    """Recorded from Tencent/InstantCharacter itself (scripts/record_instantcharacter_reference.py)."""
    recorded = REFERENCE["cases"][name]
    latents = run_case(pipe, cases.CASES[name], "latent")
    assert np.abs(latents.numpy() - cases.as_array(recorded["latents"])).max() < TOLERANCE
    image = run_case(pipe, cases.CASES[name], "pt")
    assert np.abs(image.numpy() - cases.as_array(recorded["image"])).max() < TOLERANCE


def test_another_seed_or_reference_changes_the_output(pipe):
    """The comparison above has teeth: the recorded output is not what any input gives."""
    case = cases.CASES["demo_scale"]
    recorded = cases.as_array(REFERENCE["cases"]["demo_scale"]["latents"])
    assert np.abs(run_case(pipe, case, "latent", seed=case.seed + 1).numpy() - recorded).max() > 0.1
    flipped = cases.reference_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    latents = pipe.generate(flipped, case.prompt, width=case.width, height=case.height, seed=case.seed,
                            steps=case.steps, subject_scale=case.subject_scale, output="latent")
    assert np.abs(latents.numpy() - recorded).max() > 1e-3


def test_subject_scale_zero_reproduces_plain_flux(pipe):
    """diffusers' own FluxPipeline (no adapter at all) with the same weights, seed and settings."""
    from diffusers import FluxPipeline

    flux = pipe.flux
    plain = FluxPipeline(**{name: getattr(flux, name) for name in
                            ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")},
                         transformer=tiny.transformer())
    prompt = "a lighthouse at dusk"
    expected = plain(prompt, height=48, width=64, num_inference_steps=3, guidance_scale=3.5, max_sequence_length=512,
                     generator=torch.Generator("cpu").manual_seed(5), output_type="latent").images
    ours = pipe.generate(cases.reference_image(), prompt, width=64, height=48, seed=5, steps=3, subject_scale=0.0,
                         output="latent")
    assert (ours - expected).abs().max() < 1e-5          # fp32 rounding only
    with_subject = pipe.generate(cases.reference_image(), prompt, width=64, height=48, seed=5, steps=3,
                                 subject_scale=0.9, output="latent")
    assert (with_subject - expected).abs().max() > 1e-3


def test_the_first_image_of_a_batch_is_the_single_image_of_that_seed(pipe):
    case = cases.CASES["demo_scale"]
    single = run_case(pipe, case, "latent")
    batch = run_case(pipe, case, "latent", num_images=2)
    assert batch.shape[0] == 2
    assert torch.allclose(batch[:1], single, atol=1e-5) and (batch[1] - batch[0]).abs().max() > 0.1


# ---- the files users have --------------------------------------------------------------------------

def test_single_files_load_to_the_same_pipeline_as_the_diffusers_folder(files, pipe):
    flux = FluxFiles(transformer=files.transformer_file, vae=files.vae_file, clip_l=files.clip_file,
                     t5xxl=files.t5_file)
    singles = build_pipeline(pipeline_files(files, flux))
    case = cases.CASES["true_cfg"]
    assert torch.allclose(run_case(singles, case, "pt"), run_case(pipe, case, "pt"), atol=1e-6)


FLUX_MODULES = {"transformer": "transformer", "vae": "vae", "clip_l": "text_encoder", "t5xxl": "text_encoder_2"}


def same_weights(first, second, module: str) -> bool:
    one, other = getattr(first.flux, module).state_dict(), getattr(second.flux, module).state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[key], other[key]) for key in one)


def test_an_all_in_one_checkpoint_gives_the_separate_files_pipeline_bit_for_bit(files):
    """Comfy-Org's layout (model.diffusion_model.*, vae.*, text_encoders.clip_l.*, text_encoders.t5xxl.*)
    with the same weights as the four single files: every tensor and the output are identical."""
    separate = build_pipeline(pipeline_files(files, FluxFiles(transformer=files.transformer_file, vae=files.vae_file,
                                                              clip_l=files.clip_file, t5xxl=files.t5_file)))
    combined = build_pipeline(pipeline_files(files, FluxFiles(checkpoint=files.checkpoint_file)))
    for module in FLUX_MODULES.values():
        assert same_weights(combined, separate, module), module
    case = cases.CASES["true_cfg"]
    assert torch.equal(run_case(combined, case, "latent"), run_case(separate, case, "latent"))


def test_a_part_chosen_as_its_own_file_wins_over_the_checkpoints(files, tmp_path):
    from safetensors.torch import save_file

    other_vae = tiny.fill(tiny.vae(), seed=tiny.SEED + 7)
    save_file({k: v.contiguous() for k, v in tiny.ldm_vae_state(other_vae).items()}, tmp_path / "ae-other.safetensors")
    mixed = build_pipeline(pipeline_files(files, FluxFiles(checkpoint=files.checkpoint_file,
                                                           vae=tmp_path / "ae-other.safetensors")))
    alone = build_pipeline(pipeline_files(files, FluxFiles(checkpoint=files.checkpoint_file)))
    reference = other_vae.state_dict()
    assert all(torch.equal(mixed.flux.vae.state_dict()[key], reference[key]) for key in reference)
    assert not same_weights(mixed, alone, "vae")
    assert all(same_weights(mixed, alone, module) for module in ("transformer", "text_encoder", "text_encoder_2"))


def test_each_part_of_a_checkpoint_is_read_on_its_own(files, monkeypatch):
    """Loading one part opens the file lazily and reads that part's tensors only (no copy of the rest)."""
    import safetensors

    from pipelines.local.instantcharacter.loading import load_flux_vae

    opened = safetensors.safe_open
    read: list[str] = []

    class Recording:
        def __init__(self, *args, **kwargs):
            self.handle = opened(*args, **kwargs)

        def __enter__(self):
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.inner.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    load_flux_vae(files.checkpoint_file, torch.float32, prefix="vae.")
    assert read and all(key.startswith("vae.") for key in read)
    assert len(read) == len(tiny.ldm_vae_state(tiny.vae()))


def test_comfy_orgs_fp8_all_in_one_reads_each_part_in_its_own_precision(files):
    """The fp8 all-in-one (fp8 transformer and T5, fp16 CLIP-L, bf16 VAE) loads the same transformer as
    the fp8 single file, and each text encoder and the VAE within its storage format's rounding."""
    single = files.transformer_file.parent
    fp8 = build_pipeline(pipeline_files(files, FluxFiles(checkpoint=single / "flux1-dev-tiny-allinone-fp8.safetensors")))
    fp8_file = build_pipeline(pipeline_files(files, FluxFiles(folder=files.diffusers_folder,
                                                              transformer=single / "flux1-dev-tiny-fp8_e4m3fn.safetensors")))
    exact = build_pipeline(pipeline_files(files, FluxFiles(checkpoint=files.checkpoint_file)))
    assert same_weights(fp8, fp8_file, "transformer")
    for module, precision in (("vae", 2 ** -8), ("text_encoder", 2 ** -10), ("text_encoder_2", 2 ** -3)):
        reference = getattr(exact.flux, module).state_dict()
        for key, value in getattr(fp8.flux, module).state_dict().items():
            scale = reference[key].abs().max().clamp(min=1e-12)
            assert (value - reference[key]).abs().max() / scale <= precision, (module, key)


def test_single_files_in_diffusers_layout_load_like_the_folder(files, pipe):
    """A transformer or VAE file copied out of a diffusers folder (diffusers' key names) loads as is."""
    flux = FluxFiles(transformer=files.diffusers_folder / "transformer" / "diffusion_pytorch_model.safetensors",
                     vae=files.diffusers_folder / "vae" / "diffusion_pytorch_model.safetensors", clip_l=files.clip_file,
                     t5xxl=files.t5_file)
    loaded = build_pipeline(pipeline_files(files, flux))
    assert same_weights(loaded, pipe, "transformer") and same_weights(loaded, pipe, "vae")


def test_a_diffusers_folder_is_used_whole_its_tokenizers_and_scheduler_before_comfyuis(files, pipe, tmp_path):
    """A folder whose tokenizer and scheduler differ from ComfyUI's copies is read with its own; a
    folder without them falls back to ComfyUI's copies (which the tiny folder's equal)."""
    import shutil

    own = tmp_path / "FLUX.1-dev-own"
    shutil.copytree(files.diffusers_folder, own)
    for tokenizer, first, second in (("tokenizer", "knight</w>", "castle</w>"), ("tokenizer_2", "▁knight", "▁castle")):
        path = own / tokenizer / "tokenizer.json"            # two words trade their ids in the folder's copy
        content = json.loads(path.read_text())
        vocab = content["model"]["vocab"]
        if isinstance(vocab, dict):
            vocab[first], vocab[second] = vocab[second], vocab[first]
        else:
            [i], [j] = ([n for n, (piece, _) in enumerate(vocab) if piece == word] for word in (first, second))
            vocab[i][0], vocab[j][0] = second, first
        path.write_text(json.dumps(content))
    scheduler_file = own / "scheduler" / "scheduler_config.json"
    scheduler = json.loads(scheduler_file.read_text())
    scheduler.update(base_shift=0.2, max_shift=0.6)
    scheduler_file.write_text(json.dumps(scheduler))
    honoured = build_pipeline(pipeline_files(files, FluxFiles(folder=own)))
    for name in ("tokenizer", "tokenizer_2"):
        ours, comfys = getattr(honoured.flux, name), getattr(pipe.flux, name)
        assert ours("a knight").input_ids == comfys("a castle").input_ids != comfys("a knight").input_ids
    assert (honoured.flux.scheduler.config.base_shift, honoured.flux.scheduler.config.max_shift) == (0.2, 0.6)
    case = cases.CASES["demo_scale"]
    assert not torch.equal(run_case(honoured, case, "latent"), run_case(pipe, case, "latent"))

    bare = tmp_path / "FLUX.1-dev-bare"
    shutil.copytree(files.diffusers_folder, bare)
    for part in ("tokenizer", "tokenizer_2", "scheduler"):
        shutil.rmtree(bare / part)
    fallback = build_pipeline(pipeline_files(files, FluxFiles(folder=bare)))
    assert str(fallback.flux.tokenizer.name_or_path) == str(tiny.comfy_tokenizer_dirs()[0])
    assert torch.equal(run_case(fallback, case, "latent"), run_case(pipe, case, "latent"))


@pytest.mark.parametrize(("part", "name", "precision"), [
    ("transformer", "flux1-dev-tiny-bf16.safetensors", 2 ** -8),
    ("transformer", "flux1-dev-tiny-fp8_e4m3fn.safetensors", 2 ** -3),
    ("transformer", "flux1-dev-tiny-Q8_0.gguf", 2 ** -6),
    ("t5xxl", "t5xxl-tiny_fp16.safetensors", 2 ** -11),
    ("t5xxl", "t5xxl-tiny_fp8_e4m3fn_scaled.safetensors", 2 ** -3),
])
def test_reduced_precision_files_hold_the_same_weights(files, pipe, part, name, precision):
    """bf16 / fp8 transformers and fp16 / fp8-"scaled" T5 files load to the same weights up to the
    format's rounding (an fp8-scaled file read without its scales would be off by ~100x), and run."""
    flux = FluxFiles(folder=files.diffusers_folder, **{part: files.transformer_file.parent / name})
    reduced = build_pipeline(pipeline_files(files, flux))
    module = {"transformer": "transformer", "t5xxl": "text_encoder_2"}[part]
    exact = getattr(pipe.flux, module).state_dict()
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    quantized = 0
    for key, value in getattr(reduced.flux, module).state_dict().items():
        reference = exact[key]
        quantized += hasattr(value, "quant_type")
        error = (dequantize_gguf_tensor(value).float() - reference).abs().max() / reference.abs().max().clamp(min=1e-12)
        assert error <= precision, (key, float(error))
    assert quantized > 20 if name.endswith(".gguf") else quantized == 0      # GGUF weights stay quantized
    case = cases.CASES["demo_scale"]
    assert torch.isfinite(run_case(reduced, case, "latent")).all()


def test_the_bfl_conversion_matches_comfyuis_own_key_map_at_real_size():
    """FLUX.1-dev's real architecture on the meta device: ComfyUI's diffusers→BFL map gives the
    single-file layout; the pack reads back the config and every key with its shape."""
    from diffusers import FluxTransformer2DModel

    from pipelines.local.instantcharacter.loading import shipped_config

    config = {k: v for k, v in shipped_config("flux_transformer.json").items() if not k.startswith("_")}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    bfl = tiny.bfl_transformer_state(model)
    detected = flux_config_from_bfl(bfl, "flux1-dev.safetensors")
    assert detected == config
    converted = flux_bfl_to_diffusers(bfl, detected)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_the_official_adapter_layout_loads_at_its_real_size():
    """The key layout of the 5.6 GB instantcharacter_ip-adapter.bin (from the reference's modules at
    their released sizes), on the meta device: sizes are read from it and it fits FLUX.1-dev."""
    layout = REFERENCE["official_layout"]
    state = {"image_proj": {k: torch.empty(shape, device="meta") for k, shape in layout["image_proj"].items()},
             "ip_adapter": {k: torch.empty(shape, device="meta") for k, shape in layout["ip_adapter"].items()}}
    size = adapter_module.projector_size(state["image_proj"])
    assert (size.feature_dim, size.feature_heads, size.feature_layers) == (2688, 42, 4)
    assert (size.resampler.num_queries, size.resampler.output_dim, size.resampler.dim) == (1024, 4096, 1280)
    assert (size.resampler.heads, size.resampler.depth, size.resampler.timestep_dim) == (20, 4, 320)
    attention = adapter_module.attention_size(state["ip_adapter"])
    assert attention == adapter_module.AttentionSize(processors=57, hidden_size=3072, subject_dim=4096, head_dim=128)
    built = adapter_module.build_adapter(state)
    assert sum(p.numel() for p in built.projector.parameters()) + sum(
        p.numel() for p in built.processors.parameters()) == pytest.approx(2.795e9, rel=0.01)


# ---- strict adapter loading ------------------------------------------------------------------------

def _saved(tmp_path, state, name="adapter.bin"):
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s["image_proj"].pop("resampler.latents"), "missing key image_proj.resampler.latents"),
    (lambda s: s["ip_adapter"].pop("3.norm_ip_k.scale"), "missing key ip_adapter.3.norm_ip_k.scale"),
    (lambda s: s["image_proj"].__setitem__("proj.fc2.bias", torch.zeros(5)),
     r"key image_proj.proj.fc2.bias has shape \(5,\); expected \(64,\)"),
    (lambda s: s["ip_adapter"].__setitem__("1.to_q_ip.weight", torch.zeros(2, 2)), "unexpected key ip_adapter.1.to_q_ip"),
    (lambda s: s.__setitem__("extra", {}), None),
])
def test_a_missing_extra_or_misshaped_tensor_is_an_error_naming_it(files, tmp_path, change, message):
    state = tiny.adapter_state()
    change(state)
    if message is None:          # a third top-level entry: not silently ignored either
        state = {f"{part}.{k}": v for part in ("image_proj", "ip_adapter") for k, v in state[part].items()} | {
            "extra.weight": torch.zeros(1)}
        message = "unexpected key 'extra.weight'"
    with pytest.raises(adapter_files.AdapterFormatError, match=message):
        build_pipeline(pipeline_files(files, adapter=_saved(tmp_path, state)))


def test_an_adapter_for_another_transformer_is_refused_by_name(files, tmp_path):
    state = tiny.adapter_state(processors=3)
    with pytest.raises(ModelFileError, match="has 3 attention layers; this FLUX transformer has 4"):
        build_pipeline(pipeline_files(files, adapter=_saved(tmp_path, state)))


def test_the_safetensors_conversion_gives_the_same_images(files, pipe):
    converted = build_pipeline(pipeline_files(files, adapter=files.adapter_safetensors))
    case = cases.CASES["demo_scale"]
    assert torch.allclose(run_case(converted, case, "latent"), run_case(pipe, case, "latent"), atol=1e-6)


# ---- clear errors before weights load ---------------------------------------------------------------

def test_missing_files_and_folders_are_named(files, tmp_path):
    with pytest.raises(ModelFileError, match="no model_index.json"):
        build_pipeline(pipeline_files(files, FluxFiles(folder=tmp_path)))
    with pytest.raises(ModelFileError, match="ae-missing.safetensors does not exist"):
        build_pipeline(pipeline_files(files, FluxFiles(folder=files.diffusers_folder,
                                                       vae=tmp_path / "ae-missing.safetensors")))
    with pytest.raises(ModelFileError, match="SigLIP: .* is not a Hugging Face model folder"):
        build_pipeline(pipeline_files(files, siglip=tmp_path))


def test_a_truncated_download_says_so(files, tmp_path):
    truncated = tmp_path / "flux1-dev.safetensors"
    truncated.write_bytes(files.transformer_file.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="cannot read flux1-dev.safetensors .* download it again"):
        build_pipeline(pipeline_files(files, FluxFiles(folder=files.diffusers_folder, transformer=truncated)))


def test_a_shallow_image_encoder_is_refused(files, tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    folder = tmp_path / "siglip-shallow"
    SiglipVisionModel(SiglipVisionConfig(**{**tiny.SIGLIP, "num_hidden_layers": 12})).save_pretrained(folder)
    with pytest.raises(ValueError, match="SigLIP has 12 layers; InstantCharacter reads its hidden states 7, 13, 26"):
        build_pipeline(pipeline_files(files, siglip=folder))


# ---- caches and memory ----------------------------------------------------------------------------------

def test_a_new_seed_with_the_same_reference_and_prompt_encodes_nothing_again(files):
    pipe = build_pipeline(pipeline_files(files))
    case = cases.CASES["demo_scale"]
    run_case(pipe, case, "latent")
    before = dict(vars(pipe.counters))
    run_case(pipe, case, "latent", seed=case.seed + 11)
    after = dict(vars(pipe.counters))
    assert (after["text_encoder"], after["image_encoders"], after["projector"]) == (
        before["text_encoder"], before["image_encoders"], before["projector"])
    assert after["transformer"] == before["transformer"] + case.steps
    other = Image.new("RGB", (50, 70), (10, 200, 30))
    pipe.generate(other, case.prompt, width=case.width, height=case.height, steps=case.steps, output="latent")
    assert pipe.counters.image_encoders == after["image_encoders"] + 1


@pytest.mark.parametrize("mode", ["model_offload", "group_offload", "sequential_offload"])
def test_every_memory_mode_gives_the_same_image(files, pipe, mode):
    other = build_pipeline(pipeline_files(files), memory=mode)
    case = cases.CASES["strong_subject_square"]
    assert torch.allclose(run_case(other, case, "latent"), run_case(pipe, case, "latent"), atol=1e-6)


class RecordingHost:
    """A device host (what ComfyUI's model management is to the pipeline) that records each request."""

    def __init__(self):
        self.resident_calls, self.room_asked = [], []

    def keep_resident(self, modules, device):
        self.resident_calls.append((tuple(modules), device))

    def make_room(self, nbytes, device):
        self.room_asked.append((nbytes, device))


def test_a_resident_pipeline_asks_its_host_for_each_phases_modules(files):
    host = RecordingHost()
    pipe = build_pipeline(pipeline_files(files), host=host)
    assert host.resident_calls == []                       # loading places nothing: the host does
    case = cases.CASES["strong_subject_square"]
    run_case(pipe, case, "latent")
    asked = [[id(m) for m in modules] for modules, _ in host.resident_calls]
    # text, reference, denoising (latents out: no decoding), each phase with its own modules
    assert asked == [[id(pipe.flux.text_encoder), id(pipe.flux.text_encoder_2)],
                     [id(pipe.encoders.siglip), id(pipe.encoders.dinov2)],
                     [id(pipe.flux.transformer), id(pipe.adapter.projector)]]
    assert {device for _, device in host.resident_calls} == {torch.device("cpu")}
    run_case(pipe, case, "latent", seed=case.seed + 1)    # prompt and reference cached: denoising only
    assert len(host.resident_calls) == 4 and host.room_asked == []
    assert [id(m) for m in host.resident_calls[-1][0]] == asked[-1]


def _resident_megabytes() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_twenty_runs_in_a_row_do_not_grow_memory(files):
    pipe = build_pipeline(pipeline_files(files))
    reference = cases.reference_image()
    for seed in range(3):                          # warm-up: kernels, allocator pools, caches filled
        pipe.generate(reference, f"prompt {seed % 2}", width=64, height=48, seed=seed, steps=3)
    before = _resident_megabytes()
    for seed in range(3, 23):
        pipe.generate(reference, f"prompt {seed % 2}", width=64, height=48, seed=seed, steps=3)
    assert _resident_megabytes() - before < 40, "memory grew over twenty runs"
    assert len(pipe.token_cache) <= pipe.token_cache.size and len(pipe.prompt_cache) == 2


def test_the_readme_python_example_names_the_real_api():
    """The README's "From Python" snippet: every keyword it passes exists in the code it calls."""
    from pipelines.local.instantcharacter.loading import FluxFiles, InstantCharacterFiles, build_pipeline
    from pipelines.local.instantcharacter.pipeline import InstantCharacterPipeline
    from readme_snippets import check_snippet

    check_snippet("instantcharacter.loading", {"FluxFiles": FluxFiles, "InstantCharacterFiles": InstantCharacterFiles,
                                               "build_pipeline": build_pipeline,
                                               "generate": InstantCharacterPipeline.generate})


def test_fp8_storage_keeps_the_subject_layers_in_full_precision(files, pipe):
    stored = build_pipeline(pipeline_files(files), weight_format="fp8_e4m3fn")
    transformer = stored.flux.transformer
    dtypes = {name: parameter.dtype for name, parameter in transformer.named_parameters()}
    assert dtypes["transformer_blocks.0.attn.to_q.weight"] == torch.float8_e4m3fn
    assert dtypes["single_transformer_blocks.1.proj_mlp.weight"] == torch.float8_e4m3fn
    subject = {name: dtype for name, dtype in dtypes.items() if ".processor." in name}
    assert len(subject) == 4 * 6 and set(subject.values()) == {torch.float32}
    assert dtypes["transformer_blocks.0.attn.norm_q.weight"] == torch.float32
    case = cases.CASES["demo_scale"]
    reduced, exact = run_case(stored, case, "latent"), run_case(pipe, case, "latent")
    assert torch.isfinite(reduced).all() and 0 < (reduced - exact).abs().max() < 1.0


def test_nf4_stores_the_transformers_linear_layers_in_4_bits_and_keeps_the_subject_layers(files, pipe):
    import bitsandbytes as bnb

    stored = build_pipeline(pipeline_files(files), weight_format="nf4")
    layers = dict(stored.flux.transformer.named_modules())
    exact_layers = dict(pipe.flux.transformer.named_modules())
    for name in ("transformer_blocks.0.attn.to_q", "single_transformer_blocks.1.proj_mlp", "transformer_blocks.1.ff.net.2"):
        layer = layers[name]
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_type == "nf4"
        assert layer.weight.dtype == torch.uint8 and layer.weight.numel() * 2 == exact_layers[name].weight.numel()
        restored = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
        original = exact_layers[name].weight
        assert 0 < (restored - original).norm() / original.norm() < 0.15      # 4-bit rounding, not garbage
    kept = [name for name, layer in layers.items() if type(layer) is torch.nn.Linear]
    assert sum(".processor." in name for name in kept) == 4 * 2           # to_k_ip, to_v_ip of every block
    assert all(layers[name].weight.dtype == torch.float32 for name in kept)
    assert "proj_out" in kept and "transformer_blocks.0.norm1.linear" in kept
    case = cases.CASES["demo_scale"]
    reduced, exact = run_case(stored, case, "latent"), run_case(pipe, case, "latent")
    assert torch.isfinite(reduced).all() and 0 < (reduced - exact).abs().mean() < 0.5 * exact.abs().mean()


def test_nf4_without_bitsandbytes_is_a_clear_error_before_any_weight_loads(files, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)            # as if not installed
    missing = pipeline_files(files, adapter=files.adapter_bin.with_name("not-there.bin"))
    with pytest.raises(ModelFileError, match=r"needs bitsandbytes \(pip install bitsandbytes\)"):
        build_pipeline(missing, weight_format="nf4")                  # not the missing file: nothing was read


# ---- style LoRA (adapter, never merged) ----------------------------------------------------------------

KOHYA_LAYERS = ["double_blocks_0_img_attn_qkv", "double_blocks_1_txt_attn_qkv", "double_blocks_0_img_attn_proj",
                "double_blocks_1_img_mod_lin", "single_blocks_0_linear1", "single_blocks_1_linear2"]
BFL_NAMES = {"double_blocks_0_img_attn_qkv": "double_blocks.0.img_attn.qkv",
             "double_blocks_1_txt_attn_qkv": "double_blocks.1.txt_attn.qkv",
             "double_blocks_0_img_attn_proj": "double_blocks.0.img_attn.proj",
             "double_blocks_1_img_mod_lin": "double_blocks.1.img_mod.lin",
             "single_blocks_0_linear1": "single_blocks.0.linear1", "single_blocks_1_linear2": "single_blocks.1.linear2"}


def _lora_pair(generator, out_features, in_features, rank=4):
    return (torch.randn(rank, in_features, generator=generator) * 0.2,
            torch.randn(out_features, rank, generator=generator) * 0.2)


def test_a_kohya_flux_lora_equals_its_weights_merged_in_the_bfl_layout(files, tmp_path):
    """Oracle: merge the LoRA into the BFL file itself (fused q/k/v untouched) and load that file;
    the pack applies the same LoRA as hooks on the unmerged model, splitting q/k/v itself."""
    from safetensors.torch import save_file

    from pipelines.local.instantcharacter.lora import read_lora

    bfl = {k: v.clone() for k, v in tiny.bfl_transformer_state(tiny.transformer()).items()}
    clip_state = {k.removeprefix("text_model."): v.clone() for k, v in tiny.clip_text().state_dict().items()}
    generator = torch.Generator().manual_seed(3)
    lora, strength, alpha, rank = {}, 0.7, 2.0, 4
    for name in KOHYA_LAYERS:
        weight = bfl[BFL_NAMES[name] + ".weight"]
        down, up = _lora_pair(generator, weight.shape[0], weight.shape[1], rank)
        lora.update({f"lora_unet_{name}.lora_down.weight": down, f"lora_unet_{name}.lora_up.weight": up,
                     f"lora_unet_{name}.alpha": torch.tensor(alpha)})
        bfl[BFL_NAMES[name] + ".weight"] = weight + strength * alpha / rank * (up @ down)
    q_proj = clip_state["encoder.layers.1.self_attn.q_proj.weight"]
    down, up = _lora_pair(generator, *q_proj.shape)
    lora.update({"lora_te1_text_model_encoder_layers_1_self_attn_q_proj.lora_down.weight": down,
                 "lora_te1_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight": up})
    clip_state["encoder.layers.1.self_attn.q_proj.weight"] = q_proj + strength * (up @ down)
    save_file({k: v.contiguous() for k, v in lora.items()}, tmp_path / "style.safetensors")
    save_file({k: v.contiguous() for k, v in bfl.items()}, tmp_path / "merged.safetensors")
    save_file({f"text_model.{k}": v.contiguous() for k, v in clip_state.items() if "position_ids" not in k},
              tmp_path / "clip_merged.safetensors")

    plain = FluxFiles(transformer=files.transformer_file, vae=files.vae_file, clip_l=files.clip_file, t5xxl=files.t5_file)
    merged = FluxFiles(transformer=tmp_path / "merged.safetensors", vae=files.vae_file,
                       clip_l=tmp_path / "clip_merged.safetensors", t5xxl=files.t5_file)
    pipe, expected_pipe = build_pipeline(pipeline_files(files, plain)), build_pipeline(pipeline_files(files, merged))
    case = cases.CASES["true_cfg"]
    without = run_case(pipe, case, "latent")
    style = pipe.load_lora(tmp_path / "style.safetensors")
    assert len(style.transformer) == 3 + 3 + 1 + 1 + 4 + 1 and len(style.text_encoder) == 1
    applied = run_case(pipe, case, "latent", lora=style, lora_strength=strength)
    expected = run_case(expected_pipe, case, "latent")
    assert (applied - expected).abs().max() < 1e-4 and (applied - without).abs().max() > 1e-2
    # nothing was merged: the next run without the LoRA is the run before it
    assert torch.equal(run_case(pipe, case, "latent"), without)
    assert read_lora(tmp_path / "style.safetensors", 256).transformer["transformer_blocks.0.attn.to_k"].scale == 0.5


def test_a_diffusers_format_lora_equals_its_merged_weights(files, pipe, tmp_path):
    from safetensors.torch import save_file

    transformer = tiny.transformer()
    generator = torch.Generator().manual_seed(4)
    lora = {}
    for path in ("single_transformer_blocks.0.attn.to_q", "transformer_blocks.1.ff.net.2"):
        layer = transformer.get_submodule(path)
        down, up = _lora_pair(generator, layer.out_features, layer.in_features)
        lora.update({f"transformer.{path}.lora_A.weight": down, f"transformer.{path}.lora_B.weight": up})
        with torch.no_grad():
            layer.weight += up @ down
    save_file({k: v.contiguous() for k, v in lora.items()}, tmp_path / "ghibli.safetensors")
    merged = build_pipeline(pipeline_files(files))
    merged.flux.transformer.load_state_dict(
        {k: v for k, v in transformer.state_dict().items()}, strict=False)
    case = cases.CASES["demo_scale"]
    applied = run_case(pipe, case, "latent", lora=pipe.load_lora(tmp_path / "ghibli.safetensors"))
    assert (applied - run_case(merged, case, "latent")).abs().max() < 1e-4


def test_a_lora_key_the_pack_cannot_place_is_named(pipe, tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_final_layer_linear.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_final_layer_linear.lora_up.weight": torch.zeros(4, 2)}, tmp_path / "odd.safetensors")
    with pytest.raises(ModelFileError, match="cannot place 'lora_unet_final_layer_linear'"):
        pipe.load_lora(tmp_path / "odd.safetensors")


def test_real_size_text_encoders_and_vae_single_files_are_understood(tmp_path):
    """clip_l, t5xxl and ae.safetensors at FLUX.1-dev's real sizes (meta tensors written as tiny
    placeholders would be too big): the sizes read from their key layout equal the real configs."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.local.instantcharacter import loading

    def meta_state(model):
        return {key: torch.empty(value.shape, device="meta") for key, value in model.state_dict().items()}

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**loading.shipped_config("t5xxl.json")))
        clip = CLIPTextModel(CLIPTextConfig(**loading.shipped_config("clip_l.json")))
        vae = AutoencoderKL(**{k: v for k, v in loading.shipped_config("flux_vae.json").items() if not k.startswith("_")})
    captured = {}

    def fake_read(path, what, prefix=None):           # the file layout, without 10 GB of bytes
        return dict(captured[what])

    def fake_load_into(model, state, what, path, ignore=()):
        captured["model " + what] = model
        return model

    captured["T5-XXL text encoder"] = {k: v for k, v in meta_state(t5).items() if k != "encoder.embed_tokens.weight"}
    captured["CLIP-L text encoder"] = {f"text_model.{k}": v for k, v in meta_state(clip).items() if "position_ids" not in k}
    captured["FLUX VAE"] = tiny.ldm_vae_state(vae)
    original = (loading.read_state, loading.load_into)
    loading.read_state, loading.load_into = fake_read, fake_load_into
    try:
        loading.load_t5xxl(tmp_path / "t5xxl_fp16.safetensors", torch.bfloat16)
        loading.load_clip_l(tmp_path / "clip_l.safetensors", torch.bfloat16)
        loading.load_flux_vae(tmp_path / "ae.safetensors", torch.bfloat16)
    finally:
        loading.read_state, loading.load_into = original
    t5_config = captured["model T5-XXL text encoder"].config
    assert (t5_config.d_model, t5_config.num_heads, t5_config.d_kv, t5_config.d_ff, t5_config.num_layers) == (
        4096, 64, 64, 10240, 24)
    clip_config = captured["model CLIP-L text encoder"].config
    assert (clip_config.hidden_size, clip_config.num_attention_heads, clip_config.num_hidden_layers) == (768, 12, 12)
    vae_config = captured["model FLUX VAE"].config
    assert list(vae_config.block_out_channels) == [128, 256, 512, 512] and vae_config.latent_channels == 16


def test_out_of_memory_names_the_memory_mode_to_try_next(pipe, monkeypatch):
    import asyncio

    from pipelines import DetachedRunContext, GenerationRequest
    from pipelines.local.instantcharacter.backend import LocalInstantCharacter

    def exhausted(*args, **kwargs):            # what CUDA raises when the card is full
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pipe, "generate", exhausted)
    request = GenerationRequest(reference=cases.reference_image(), prompt="x", width=64, height=64, steps=1,
                                identity_strength=0.9)
    with pytest.raises(MemoryError, match="memory mode 'resident'; try the memory mode 'model_offload'"):
        asyncio.run(LocalInstantCharacter(pipe, "resident").generate(request, DetachedRunContext()))
    with pytest.raises(MemoryError, match="'sequential_offload'; lower the size or the number of images"):
        asyncio.run(LocalInstantCharacter(pipe, "sequential_offload").generate(request, DetachedRunContext()))
