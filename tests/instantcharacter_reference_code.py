"""The reference InstantCharacter code (Tencent/InstantCharacter, a checkout given by path; never
redistributed, and not installable from a package registry) imported unmodified, for
scripts/record_instantcharacter_reference.py and benchmarks/local_instantcharacter.py.

Two things are supplied around it:
- its only timm import (`timm.models.vision_transformer.Mlp`, fc1 → GELU-tanh → fc2) is served by
  a stand-in module written to a temporary folder, so installing timm (and torchvision) is not needed;
- the typing names (Union, List, …) its star import took from diffusers' FLUX module, which newer
  diffusers no longer imports there.
"""
from __future__ import annotations

import sys
import tempfile
import textwrap
import typing
from pathlib import Path
from types import SimpleNamespace

TIMM_STAND_IN = '''
from torch import nn


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
'''


def import_reference(reference_repo: Path) -> SimpleNamespace:
    """→ its pipeline class, projector and attention processor."""
    shim = Path(tempfile.mkdtemp(prefix="timm-stand-in-"))
    (shim / "timm" / "models").mkdir(parents=True)
    (shim / "timm" / "__init__.py").write_text("")
    (shim / "timm" / "models" / "__init__.py").write_text("")
    (shim / "timm" / "models" / "vision_transformer.py").write_text(textwrap.dedent(TIMM_STAND_IN))
    sys.path[:0] = [str(shim), str(Path(reference_repo).resolve())]

    import diffusers.pipelines.flux.pipeline_flux as flux_module
    for name in ("Any", "Callable", "Dict", "List", "Optional", "Union"):
        setattr(flux_module, name, getattr(typing, name))

    from models.attn_processor import FluxIPAttnProcessor          # the reference's own modules
    from models.resampler import CrossLayerCrossScaleProjector
    from pipeline import InstantCharacterFluxPipeline

    return SimpleNamespace(pipeline=InstantCharacterFluxPipeline, projector=CrossLayerCrossScaleProjector,
                           processor=FluxIPAttnProcessor)
