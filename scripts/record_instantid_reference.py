#!/usr/bin/env python3
"""Record what the reference InstantID implementation (instantX-research/InstantID) outputs for the
tiny test models, so the test suite can hold the pack's pipeline to it without the reference code
(which is not redistributed, and not installable from a package registry).

    git clone https://github.com/instantX-research/InstantID /tmp/InstantID
    pip install --target /tmp/peft --no-deps peft accelerate     # for diffusers' LoRA loading only
    PYTHONPATH=/tmp/peft .comfyui/venv/bin/python scripts/record_instantid_reference.py /tmp/InstantID

The reference runs unmodified: the demo's pipeline (`pipeline_stable_diffusion_xl_instantid_full.py`,
the one its Gradio app uses, with prompt weighting and the face-region mask), its own Resampler and
attention processors, loaded with the tiny weights of tests/instantid_models.py from the same files
the tests load into the pack, scheduler swapped to Euler as the demo does; for the fast mode, the
tiny LCM-LoRA loaded by diffusers' own `load_lora_weights` (needs peft) and switched on with the LCM
scheduler, as the demo switches it. Two things are supplied around it:
- its Resampler is built with the tiny sizes (its `set_image_proj_model` hard-codes the released
  1280-wide, 4-deep one) and loaded with strict=True; its `set_ip_adapter` runs as is;
- `diffusers.pipelines.controlnet.multicontrolnet`, the module path it imports MultiControlNetModel
  from, is aliased to where newer diffusers keeps it.
Its `draw_kps` draws the keypoint image from the case's keypoints, and the face box becomes the
control mask as its app.py builds it. The demo's `resize_img` (a function inside app.py's main(),
which imports gradio) is taken from app.py's source as is and run on a few photo sizes. The layout
of the official `ip-adapter.bin` is read off the reference's own Resampler and `set_ip_adapter` at
the released sizes (on the meta device: no weights).

Writes tests/data/instantid_reference.json.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT / "tests"), str(REPO_ROOT)]

OUT = REPO_ROOT / "tests" / "data" / "instantid_reference.json"


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    reference_repo = Path(sys.argv[1]).resolve()
    sys.path[:0] = [str(reference_repo)]

    import numpy as np
    import torch
    from PIL import Image

    import diffusers.models.controlnets.multicontrolnet as moved
    sys.modules["diffusers.pipelines.controlnet.multicontrolnet"] = moved

    import instantid_fidelity as cases
    import instantid_models as tiny
    from diffusers import ControlNetModel, EulerDiscreteScheduler, LCMScheduler
    from ip_adapter.resampler import Resampler                              # the reference's own modules
    from pipeline_stable_diffusion_xl_instantid_full import StableDiffusionXLInstantIDPipeline, draw_kps

    files = tiny.build_tiny_instantid(Path(tempfile.mkdtemp(prefix="tiny-instantid-")))
    controlnet = ControlNetModel.from_pretrained(str(files.controlnet_folder), torch_dtype=torch.float32)
    pipe = StableDiffusionXLInstantIDPipeline.from_pretrained(str(files.sdxl_folder), controlnet=controlnet,
                                                              torch_dtype=torch.float32, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    r = tiny.RESAMPLER
    resampler = Resampler(dim=r["dim"], depth=r["depth"], dim_head=64, heads=r["dim"] // 64,
                          num_queries=r["num_queries"], embedding_dim=r["embedding_dim"],
                          output_dim=pipe.unet.config.cross_attention_dim, ff_mult=4).eval()
    resampler.load_state_dict(torch.load(files.adapter, map_location="cpu")["image_proj"], strict=True)
    pipe.image_proj_model = resampler
    pipe.image_proj_model_in_features = r["embedding_dim"]
    pipe.set_ip_adapter(str(files.adapter), num_tokens=r["num_queries"], scale=0.5)
    pipe.load_lora_weights(str(files.lcm_lora))          # loaded, then switched per case, as the demo does
    euler_config = pipe.scheduler.config

    width, height = cases.CANVAS
    keypoints = draw_kps(Image.new("RGB", cases.CANVAS), cases.KPS)
    mask = np.zeros([height, width, 3])
    x1, y1, x2, y2 = (int(v) for v in cases.BBOX)
    mask[y1:y2, x1:x2] = 255
    control_mask = Image.fromarray(mask.astype(np.uint8))

    record = {"about": "outputs of instantX-research/InstantID @ its HEAD (the demo's full pipeline) for the tiny "
                       "models of tests/instantid_models.py; written by scripts/record_instantid_reference.py",
              "keypoint_image": cases.packed(np.asarray(keypoints), levels=255),
              "cases": {}}
    for name, case in cases.CASES.items():
        if case.scheduler == "lcm":
            pipe.enable_lora()
            pipe.scheduler = LCMScheduler.from_config(euler_config)
        else:
            pipe.disable_lora()
            pipe.scheduler = EulerDiscreteScheduler.from_config(euler_config)
        pipe.set_ip_adapter_scale(case.adapter_strength)
        kwargs = dict(prompt=case.prompt, negative_prompt=case.negative_prompt, image_embeds=cases.face_embedding(),
                      image=keypoints, control_mask=control_mask if case.enhance_face_region else None,
                      controlnet_conditioning_scale=case.identity_strength, num_inference_steps=case.steps,
                      guidance_scale=case.guidance, height=height, width=width)
        latents = pipe(output_type="latent", generator=torch.Generator("cpu").manual_seed(case.seed), **kwargs).images
        image = pipe(output_type="pt", generator=torch.Generator("cpu").manual_seed(case.seed), **kwargs).images
        record["cases"][name] = {"latents": cases.rounded(latents), "image": cases.packed(image)}
        print(name, tuple(latents.shape), tuple(image.shape), float(latents.abs().mean()))
    record["resize_img"] = record_resize_img(reference_repo)
    record["official_layout"] = official_layout(pipe)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record) + "\n")
    print("wrote", OUT.relative_to(REPO_ROOT), f"({OUT.stat().st_size // 1024} KB)")
    return 0


def record_resize_img(reference_repo: Path) -> list:
    """The demo's resize_img on gradient photos of several sizes: output size and pixel hash."""
    import ast
    import hashlib

    import instantid_fidelity as cases
    import numpy as np
    import PIL
    from PIL import Image

    source = (reference_repo / "gradio_demo" / "app.py").read_text()
    main = next(node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name == "main")
    function = next(node for node in main.body if isinstance(node, ast.FunctionDef) and node.name == "resize_img")
    namespace = {"PIL": PIL, "Image": Image, "np": np}
    exec(compile(ast.Module([function], []), "app.py", "exec"), namespace)
    out = []
    for width, height in cases.RESIZE_INPUTS:
        photo = cases.gradient_photo(width, height)
        resized = namespace["resize_img"](photo)
        out.append({"input": [width, height], "output": list(resized.size),
                    "sha256": hashlib.sha256(resized.tobytes()).hexdigest()})
        print("resize_img", (width, height), "->", resized.size)
    return out


def official_layout(pipe) -> dict:
    """Key → shape of the official ip-adapter.bin: the reference's Resampler at its hard-coded size, and
    its set_ip_adapter run on a real-size SDXL UNet (meta tensors; its file read answered with the
    processors' own state)."""
    import torch
    from diffusers import UNet2DConditionModel
    from ip_adapter.resampler import Resampler

    from pipelines.local.instantid.loading import shipped_config

    with torch.device("meta"):
        resampler = Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16, embedding_dim=512,
                              output_dim=2048, ff_mult=4)
        unet = UNet2DConditionModel(**shipped_config("sdxl_unet.json"))
    holder = type("Holder", (), {})()
    holder.unet = unet
    real_load = torch.load
    torch.load = lambda *_, **__: {"ip_adapter": torch.nn.ModuleList(unet.attn_processors.values()).state_dict()}
    try:
        type(pipe).set_ip_adapter(holder, "official-layout", num_tokens=16, scale=0.5)
    finally:
        torch.load = real_load
    return {"image_proj": {k: list(v.shape) for k, v in resampler.state_dict().items()},
            "ip_adapter": {k: list(v.shape)
                           for k, v in torch.nn.ModuleList(unet.attn_processors.values()).state_dict().items()}}


if __name__ == "__main__":
    sys.exit(main())
