"""Test-only ComfyUI nodes (never shipped; the native test fixtures link this folder into the test
ComfyUI's custom_nodes): FLUX conditioning at the tiny text widths the tiny FLUX files take, and SDXL
conditioning. ComfyUI's DualCLIPLoader always builds T5-XXL at full size (4.7 B parameters), and
CheckpointLoaderSimple SDXL's CLIP-L + CLIP-G at full size (0.8 B), too big for CI."""
import torch

# the tiny FLUX transformer's text width and pooled width (tests/instantcharacter_models.py TRANSFORMER)
TEXT_WIDTH = 32
POOLED_WIDTH = 64
TOKENS = 16


class TestFluxConditioning:
    """Seeded FLUX conditioning (text tokens, pooled vector, guidance) as CLIPTextEncode + FluxGuidance give."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, guidance):
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, TOKENS, TEXT_WIDTH, generator=generator)
        pooled = torch.randn(1, POOLED_WIDTH, generator=generator)
        return ([[tokens, {"pooled_output": pooled, "guidance": guidance}]],)


class TestSDXLConditioning:
    """Seeded SDXL conditioning as CLIPTextEncode gives it: 77 tokens 2048 wide and the pooled 1280
    (the sampler then takes the size for SDXL's added condition from the latent)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randn(1, 77, 2048, generator=generator)
        pooled = torch.randn(1, 1280, generator=generator)
        return ([[tokens, {"pooled_output": pooled}]],)


NODE_CLASS_MAPPINGS = {"TestFluxConditioning": TestFluxConditioning, "TestSDXLConditioning": TestSDXLConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"TestFluxConditioning": "Test FLUX Conditioning (tiny widths)",
                              "TestSDXLConditioning": "Test SDXL Conditioning"}
