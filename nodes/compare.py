"""Compare Results: the outputs of several generator nodes (any backends) in one labelled grid,
each with its identity score when face models and the reference are connected."""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines import image_batch_to_pil, pil_to_image_batch
from .common import CATEGORY_ROOT, node_id
from .face_nodes import FaceModelsSocket
from .generator_inputs import single_image

SLOTS = 6


class CompareResults(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        slots = []
        for index in range(1, SLOTS + 1):
            slots += [io.Image.Input(f"images_{index}", optional=True, tooltip="a generator's images"),
                      io.String.Input(f"info_{index}", optional=True, force_input=True,
                                      tooltip="the same generator's info (names the backend)")]
        return io.Schema(
            node_id=node_id("CompareResults"), display_name="Compare Results", category=CATEGORY_ROOT,
            description="Up to six generators' results (local or cloud) in one grid, each captioned with its backend "
                        "and — with face models and the reference connected — how well it kept the face (identity "
                        "similarity of the first image of each). The report names the best.",
            inputs=[FaceModelsSocket.Input("face_models", optional=True), io.Image.Input("reference", optional=True),
                    io.Int.Input("cell_size", default=512, min=128, max=2048, step=64), *slots],
            outputs=[io.Image.Output(display_name="grid"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, cell_size, face_models=None, reference=None, **slots) -> io.NodeOutput:
        from ..pipelines.compare import Entry, grid, label_from_info, report
        from ..pipelines.identity import identity_scores

        results = []
        for index in range(1, SLOTS + 1):
            images = slots.get(f"images_{index}")
            if images is not None:
                first = image_batch_to_pil(images)[0]
                results.append((label_from_info(slots.get(f"info_{index}"), f"input {index}"), first))
        scored = face_models is not None and reference is not None
        scores = (identity_scores(face_models, single_image(reference, "reference"), [image for _, image in results])
                  if scored and results else [None] * len(results))
        entries = [Entry(label, image, getattr(score, "score", None), scored)
                   for (label, image), score in zip(results, scores)]
        return io.NodeOutput(pil_to_image_batch([grid(entries, cell_size)]), report(entries))


COMPARE_NODES = [CompareResults]
