"""Compare Results: the outputs of several generator nodes (any backends) in one labelled grid,
each with its identity score when face models and the reference are connected.

Every input is lazy: before anything upstream runs, the node asks ComfyUI only for the generators
that can run here (availability.py: a cloud one needs its key, a local one its loaders' files) — and
for the face models and reference only when they can load and something is there to score. A backend
left out costs nothing and keeps its place in the grid as a tile "skipped: <why>"; the others run.
"""
from __future__ import annotations

from comfy_api.latest import io

from ..pipelines import image_batch_to_pil, pil_to_image_batch
from .availability import is_link, unavailable_input
from .common import CATEGORY_ROOT, node_id
from .face_nodes import FaceModelsSocket
from .generator_inputs import single_image

SLOTS = 6
SCORING_INPUTS = ("face_models", "reference")


class CompareResults(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        slots = []
        for index in range(1, SLOTS + 1):
            slots += [io.Image.Input(f"images_{index}", optional=True, lazy=True, tooltip="a generator's images"),
                      io.String.Input(f"info_{index}", optional=True, lazy=True, force_input=True,
                                      tooltip="the same generator's info (names the backend)")]
        return io.Schema(
            node_id=node_id("CompareResults"), display_name="Compare Results", category=CATEGORY_ROOT,
            description="Up to six generators' results (local or cloud) in one grid, each captioned with its backend "
                        "and — with face models and the reference connected — how well it kept the face (identity "
                        "similarity of the first image of each). The report names the best. Only the generators "
                        "that can run here run: one without its API key or model files is shown as skipped, and why.",
            inputs=[FaceModelsSocket.Input("face_models", optional=True, lazy=True),
                    io.Image.Input("reference", optional=True, lazy=True),
                    io.Int.Input("cell_size", default=512, min=128, max=2048, step=64), *slots],
            outputs=[io.Image.Output(display_name="grid"), io.String.Output(display_name="report")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, **_):
        # what can run is checked at every run (a key or a file added since): never a cached grid. The
        # generators that ran stay cached as ComfyUI caches them.
        return float("nan")

    @classmethod
    def check_lazy_status(cls, cell_size, **lazy) -> list[str]:
        # ComfyUI asks again once what was asked for is evaluated: the choice is made on the first call
        # (when nothing is evaluated yet) and never widened, so nothing is run or billed twice.
        if any(value is not None for value in lazy.values()):
            return []
        linked, runnable = cls._linked(), []
        for index in range(1, SLOTS + 1):
            if f"images_{index}" in linked and cls._why_not(f"images_{index}") is None:
                runnable += [name for name in (f"images_{index}", f"info_{index}") if name in linked]
        if runnable and all(name in linked for name in SCORING_INPUTS) and cls._why_not("face_models") is None:
            runnable += SCORING_INPUTS
        return runnable

    @classmethod
    def execute(cls, cell_size, face_models=None, reference=None, **slots) -> io.NodeOutput:
        from ..pipelines.compare import Entry, grid, label_from_info, report
        from ..pipelines.identity import identity_scores

        linked, results = cls._linked(), []
        for index in range(1, SLOTS + 1):
            images = slots.get(f"images_{index}")
            if images is not None:
                first = image_batch_to_pil(images)[0]
                results.append((label_from_info(slots.get(f"info_{index}"), f"input {index}"), first, None))
            elif f"images_{index}" in linked:        # linked, and left out by check_lazy_status: say why
                why = cls._why_not(f"images_{index}") or "it could not run when the prompt started"
                results.append((cls._source_title(f"images_{index}", f"input {index}"), None, why))
        ran = [image for _, image, skipped in results if skipped is None]
        scored = face_models is not None and reference is not None and bool(ran)
        scores = identity_scores(face_models, single_image(reference, "reference"), ran) if scored else []
        score_of = {id(image): score.score for image, score in zip(ran, scores)}
        entries = [Entry(label, skipped=skipped) if skipped is not None
                   else Entry(label, image, score_of.get(id(image)), scored) for label, image, skipped in results]
        notes = ()
        if ran and not scored and "face_models" in linked and (why := cls._why_not("face_models")):
            notes = (f"identity not scored: {why}",)
        return io.NodeOutput(pil_to_image_batch([grid(entries, cell_size)]), report(entries, notes))

    @classmethod
    def _linked(cls) -> set[str]:
        """This node's inputs that are wired to another node in the prompt."""
        entry = (cls.hidden.prompt or {}).get(cls.hidden.unique_id, {})
        return {name for name, value in entry.get("inputs", {}).items() if is_link(value)}

    @classmethod
    def _why_not(cls, input_name: str) -> str | None:
        return unavailable_input(cls.hidden.prompt or {}, cls.hidden.unique_id, input_name)

    @classmethod
    def _source_title(cls, input_name: str, fallback: str) -> str:
        """The title of the node feeding `input_name` (the user's title, else its display name)."""
        import nodes

        prompt = cls.hidden.prompt or {}
        source = prompt.get(prompt.get(cls.hidden.unique_id, {}).get("inputs", {}).get(input_name, [None])[0], {})
        title = source.get("_meta", {}).get("title")
        return title or nodes.NODE_DISPLAY_NAME_MAPPINGS.get(source.get("class_type"), fallback)


COMPARE_NODES = [CompareResults]
