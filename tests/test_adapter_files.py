"""The adapter-file handling both local adapters share (pipelines/local/adapter_files.py): one
ResamplerSize, and strict-loading errors that read alike and name the right adapter."""
from __future__ import annotations

import pytest
import torch

import instantcharacter_models as character_models
import instantid_models as face_models
from pipelines.local import adapter_files
from pipelines.local.instantcharacter import adapter as character_adapter
from pipelines.local.instantid import adapter as face_adapter


@pytest.fixture(scope="module")
def unet():
    return face_models.unet()


def build_character(state):
    return character_adapter.build_adapter(state)


def build_face(unet):
    return lambda state: face_adapter.build_face_adapter(state, unet)


def flat(state: dict) -> dict:
    """The .safetensors conversion's layout: `image_proj.<key>`, `ip_adapter.<key>`."""
    return {f"{part}.{key}": value for part, inner in state.items() for key, value in inner.items()}


def test_both_adapters_size_their_resampler_with_one_type():
    character = character_adapter.projector_size(character_models.adapter_state()["image_proj"]).resampler
    face = adapter_files.resampler_size(face_models.adapter_state()["image_proj"], "image_proj", face_adapter.HEAD_DIM)
    assert type(character) is type(face) is adapter_files.ResamplerSize
    assert character_adapter.ResamplerSize is face_adapter.ResamplerSize is adapter_files.ResamplerSize
    assert character.timestep_dim is not None and face.timestep_dim is None
    assert (face.depth, face.num_queries, face.dim) == (face_models.RESAMPLER["depth"], face_models.RESAMPLER["num_queries"],
                                                        face_models.RESAMPLER["dim"])


def test_a_strict_loading_error_reads_alike_for_both_adapters(unet):
    cases = [(build_character, character_models.adapter_state(), "resampler.latents", "resampler.proj_out.bias"),
             (build_face(unet), face_models.adapter_state(), "latents", "proj_out.bias")]
    for build, state, needed, reshaped in cases:
        missing = {**state, "image_proj": {k: v for k, v in state["image_proj"].items() if k != needed}}
        with pytest.raises(adapter_files.AdapterFormatError, match=rf"^missing key image_proj\.{needed}$"):
            build(missing)
        misshaped = {**state, "image_proj": {**state["image_proj"], reshaped: torch.zeros(5)}}
        with pytest.raises(adapter_files.AdapterFormatError,
                           match=rf"^key image_proj\.{reshaped} has shape \(5,\); expected \(\d+,\)$"):
            build(misshaped)
        extra = {**state, "ip_adapter": {**state["ip_adapter"], "1.to_q_ip.weight": torch.zeros(2, 2)}}
        with pytest.raises(adapter_files.AdapterFormatError, match=r"^unexpected key ip_adapter\.1\.to_q_ip\.weight$"):
            build(extra)


@pytest.mark.parametrize("which", ["InstantCharacter adapter", "InstantID face adapter"])
def test_a_file_of_another_layout_is_refused_naming_the_adapter_it_is_not(unet, which):
    build = build_character if which.startswith("InstantCharacter") else build_face(unet)
    with pytest.raises(adapter_files.AdapterFormatError,
                       match=rf"^this is not an {which}: expected the keys 'image_proj' and 'ip_adapter' \(found "):
        build({"model.diffusion_model.x.weight": torch.zeros(1)})
    state = flat(character_models.adapter_state() if which.startswith("InstantCharacter") else face_models.adapter_state())
    with pytest.raises(adapter_files.AdapterFormatError,
                       match=rf"^unexpected key 'extra\.weight' \(an {which} has only 'image_proj\.\*' and 'ip_adapter\.\*'\)$"):
        build(state | {"extra.weight": torch.zeros(1)})


def test_a_gap_in_the_numbered_blocks_names_the_first_missing_one():
    state = character_models.adapter_state()
    projector = {k: v for k, v in state["image_proj"].items() if not k.startswith("resampler.layers.0.")}
    with pytest.raises(adapter_files.AdapterFormatError, match=r"^missing block image_proj\.resampler\.layers\.0\.\*$"):
        character_adapter.projector_size(projector)
