#!/usr/bin/env python3
"""Record what the reference InstantCharacter implementation (Tencent/InstantCharacter) outputs for
the tiny test models, so the test suite can hold the pack's pipeline to it without the reference
code (which is not redistributed, and not installable from a package registry).

    git clone https://github.com/Tencent/InstantCharacter /tmp/InstantCharacter
    .comfyui/venv/bin/python scripts/record_instantcharacter_reference.py /tmp/InstantCharacter

The reference runs unmodified: its own pipeline class, projector and attention processors, with the
tiny weights of tests/instantcharacter_models.py (the same tensors the tests load into the pack).
Its projector and processors are constructed with the tiny sizes (instead of its
`init_ccp_and_attn_processor`, which builds 2688-wide modules), then loaded with strict=True; its
import needs two stand-ins (tests/instantcharacter_reference_code.py says which).
Image processors are the slow (PIL) ones, as `AutoImageProcessor` gave at the reference's time.

Writes tests/data/instantcharacter_reference.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

OUT = REPO_ROOT / "tests" / "data" / "instantcharacter_reference.json"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    import torch
    from transformers import BitImageProcessor, Dinov2Model, SiglipImageProcessor, SiglipVisionModel

    import instantcharacter_fidelity as cases
    import instantcharacter_models as tiny
    from instantcharacter_reference_code import import_reference

    reference = import_reference(Path(sys.argv[1]))
    InstantCharacterFluxPipeline = reference.pipeline
    CrossLayerCrossScaleProjector, FluxIPAttnProcessor = reference.projector, reference.processor

    files = tiny.build_tiny_files(Path(tempfile.mkdtemp(prefix="tiny-instantcharacter-")))
    pipe = InstantCharacterFluxPipeline.from_pretrained(str(files.diffusers_folder), torch_dtype=torch.float32,
                                                        local_files_only=True)
    pipe.siglip_image_encoder = SiglipVisionModel.from_pretrained(str(files.siglip_folder)).eval()
    pipe.siglip_image_processor = SiglipImageProcessor.from_pretrained(str(files.siglip_folder))
    pipe.dino_image_encoder_2 = Dinov2Model.from_pretrained(str(files.dinov2_folder)).eval()
    processor = BitImageProcessor.from_pretrained(str(files.dinov2_folder))
    processor.crop_size = dict(height=384, width=384)          # as the reference's init_adapter
    processor.size = dict(shortest_edge=384)
    pipe.dino_image_processor_2 = processor

    state = tiny.adapter_state()
    p = tiny.PROJECTOR
    projector = CrossLayerCrossScaleProjector(
        inner_dim=p["feature_dim"], num_attention_heads=p["feature_dim"] // 64, attention_head_dim=64,
        cross_attention_dim=p["feature_dim"], num_layers=p["feature_layers"], dim=p["resampler_dim"],
        depth=p["resampler_depth"], dim_head=64, heads=p["resampler_dim"] // 64, num_queries=p["num_queries"],
        embedding_dim=p["feature_dim"], output_dim=tiny.TRANSFORMER["joint_attention_dim"], ff_mult=4,
        timestep_in_dim=p["timestep_dim"], timestep_flip_sin_to_cos=True, timestep_freq_shift=0).eval()
    projector.load_state_dict(state["image_proj"], strict=True)
    pipe.subject_image_proj_model = projector
    transformer = pipe.transformer
    hidden = transformer.config.attention_head_dim * transformer.config.num_attention_heads
    processors = {name: FluxIPAttnProcessor(hidden_size=hidden, ip_hidden_states_dim=pipe.text_encoder_2.config.d_model)
                  for name in transformer.attn_processors}
    transformer.set_attn_processor(processors)
    torch.nn.ModuleList(transformer.attn_processors.values()).load_state_dict(state["ip_adapter"], strict=True)

    record = {"about": "outputs of Tencent/InstantCharacter @ its HEAD for the tiny models of "
                       "tests/instantcharacter_models.py; written by scripts/record_instantcharacter_reference.py",
              "cases": {}}
    for name, case in cases.CASES.items():
        kwargs = dict(prompt=case.prompt, num_inference_steps=case.steps, guidance_scale=case.guidance,
                      width=case.width, height=case.height, subject_image=cases.reference_image(),
                      subject_scale=case.subject_scale, generator=torch.manual_seed(case.seed))
        if case.true_cfg_scale > 1:
            kwargs.update(negative_prompt=case.negative_prompt, true_cfg_scale=case.true_cfg_scale)
        latents = pipe(output_type="latent", **kwargs).images
        kwargs["generator"] = torch.manual_seed(case.seed)
        image = pipe(output_type="pt", **kwargs).images
        record["cases"][name] = {"latents": cases.rounded(latents), "image": cases.rounded(image)}
        print(name, tuple(latents.shape), tuple(image.shape), float(latents.abs().mean()))
    # the key layout of the official 5.6 GB file: the reference's own modules at their real sizes
    with torch.device("meta"):
        real_projector = CrossLayerCrossScaleProjector()           # its defaults are the released sizes
        real_processor = FluxIPAttnProcessor(hidden_size=3072, ip_hidden_states_dim=4096)
    record["official_layout"] = {
        "image_proj": {key: list(value.shape) for key, value in real_projector.state_dict().items()},
        "ip_adapter": {f"{index}.{key}": list(value.shape) for index in range(57)
                       for key, value in real_processor.state_dict().items()},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record) + "\n")
    print("wrote", OUT.relative_to(REPO_ROOT), f"({OUT.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
