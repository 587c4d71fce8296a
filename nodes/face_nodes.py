"""Face nodes: load the antelopev2 face models once (their output feeds the InstantID loader and the
nodes below), look at what face analysis finds in an image, score how well any backend's images
keep the reference's identity, and make InstantID's face from numbers the user already has.

Thin adapters over pipelines.local.faces, pipelines.local.instantid.face_input and pipelines.identity.
"""
from __future__ import annotations

import json
import os

from comfy_api.latest import io

from ..pipelines import image_batch_to_pil, pil_to_image_batch
from . import model_files as files
from .common import CATEGORY_LOCAL, CATEGORY_ROOT, node_id
from .generator_inputs import single_image

CATEGORY_FACES = f"{CATEGORY_ROOT}/Faces"
FaceModelsSocket = io.Custom("CHARID_FACE_MODELS")
# a pipelines.local.instantid.conditioning.FaceConditioning: what every InstantID node takes as a face
FaceSocket = io.Custom("CHARID_INSTANTID_FACE")


class FaceModelsLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("FaceModelsLoader"), display_name="Load Face Models (antelopev2)", category=CATEGORY_FACES,
            description="The antelopev2 face detector and recognizer (scrfd_10g_bnkps.onnx, glintr100.onnx) from "
                        "models/insightface/models/antelopev2 (a nested antelopev2/antelopev2 folder is found too). "
                        "Non-commercial research use only.",
            inputs=[
                io.Combo.Input("antelopev2", options=files.antelopev2_options(),
                               tooltip="The folder holding the two ONNX files."),
                io.Combo.Input("provider", options=["auto", "cpu"], default="auto",
                               tooltip="auto: onnxruntime's CUDA provider when ComfyUI runs on a GPU and "
                                       "onnxruntime-gpu works, else the CPU."),
            ],
            outputs=[FaceModelsSocket.Output(display_name="face_models")],
        )

    @classmethod
    def validate_inputs(cls, antelopev2) -> bool:
        """At queue time only a name that could leave the model folders is refused: a graph whose
        face models never load (an unchosen local branch) queues without them."""
        lines = files.check_names({"antelopev2": antelopev2})
        if lines:
            raise files.InputProblems(lines)
        return True

    @classmethod
    def plan(cls, antelopev2, **_):
        """The antelopev2 folder these widget values name: a listed folder that holds the two files
        (FileNotFoundError / FaceAnalysisError naming what is missing and where to get it)."""
        from ..pipelines.local.faces import find_antelopev2

        if unsafe := files.check_names({"antelopev2": antelopev2}):
            raise FileNotFoundError("\n".join(unsafe))
        folder = files.listed_folder("antelopev2", antelopev2, files.INSIGHTFACE_FOLDER, files.antelopev2_folders())
        return find_antelopev2(folder)

    @classmethod
    def execute(cls, antelopev2, provider) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..pipelines.local.faces import FaceAnalyzer

        folder = cls.plan(antelopev2)
        on_cpu = provider == "cpu" or mm.get_torch_device().type == "cpu"      # ComfyUI's --cpu counts too
        return io.NodeOutput(FaceAnalyzer(folder, device="cpu" if on_cpu else "cuda"))


class FaceAnalysisNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("FaceAnalysis"), display_name="Analyze Face", category=CATEGORY_FACES,
            description="What InstantID sees in a photo: the keypoint image the IdentityNet is given and the face "
                        "aligned as the recognizer sees it (112×112), for the largest face.",
            inputs=[FaceModelsSocket.Input("face_models"), io.Image.Input("image")],
            outputs=[io.Image.Output(display_name="keypoints"), io.Image.Output(display_name="aligned_face"),
                     io.String.Output(display_name="info", tooltip="JSON: faces found, the face's box and score.")],
        )

    @classmethod
    def execute(cls, face_models, image) -> io.NodeOutput:
        from PIL import Image

        from ..pipelines.local.faces import aligned_face, draw_keypoints, image_to_bgr

        photo = single_image(image, "image")
        faces = face_models.analyze(photo)
        face = face_models.largest_face(photo, "input")
        keypoints = draw_keypoints(photo.size, face.kps)
        crop = aligned_face(image_to_bgr(photo), face.kps, face_models.recognizer_size)
        info = {"faces": len(faces), "box": [round(float(v), 1) for v in face.bbox], "score": round(face.score, 4),
                "keypoints": [[round(float(x), 1), round(float(y), 1)] for x, y in face.kps]}
        return io.NodeOutput(pil_to_image_batch([keypoints]), pil_to_image_batch([Image.fromarray(crop[:, :, ::-1])]),
                             json.dumps(info))


class IdentitySimilarityNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("IdentitySimilarity"), display_name="Identity Similarity", category=CATEGORY_FACES,
            description="How well each image keeps the reference's face: cosine similarity of ArcFace embeddings "
                        "(largest face in each), for images from any backend, local or cloud. An image without a "
                        "face scores none.",
            inputs=[FaceModelsSocket.Input("face_models"), io.Image.Input("reference"), io.Image.Input("images")],
            outputs=[io.Float.Output(display_name="scores", is_output_list=True,
                                     tooltip="One score per image (none where no face was found)."),
                     io.String.Output(display_name="report"),
                     io.Image.Output(display_name="annotated", tooltip="The images with their score written on.")],
        )

    @classmethod
    def execute(cls, face_models, reference, images) -> io.NodeOutput:
        from ..pipelines.identity import annotate, identity_scores

        batch = image_batch_to_pil(images)
        scores = identity_scores(face_models, single_image(reference, "reference"), batch)
        lines = [f"image {index + 1}: {score.text()}" for index, score in enumerate(scores)]
        found = [score.score for score in scores if score.score is not None]
        if found:
            lines.append(f"mean over {len(found)} image(s) with a face: {sum(found) / len(found):.3f}")
        annotated = [annotate(image, f"identity {score.text()}") for image, score in zip(batch, scores)]
        return io.NodeOutput([score.score for score in scores], "\n".join(lines), pil_to_image_batch(annotated))


# ---- a precomputed face ----------------------------------------------------------------------------

def embedding_files() -> list[str]:
    """.npy and .safetensors files in ComfyUI's input folder and its sub-folders (where LoadImage's
    photos are: users put their files there), as "sub/name.npy"."""
    import folder_paths

    from ..pipelines.local.instantid.face_input import EMBEDDING_EXTENSIONS

    base = folder_paths.get_input_directory()
    found = []
    for root, dirs, names in os.walk(base):          # links not followed: a loop would never end
        relative = os.path.relpath(root, base)
        if relative != "." and relative.count(os.sep) >= 1:
            dirs.clear()                             # input/, its folders and theirs
        found += [name if relative == "." else f"{relative}/{name}".replace(os.sep, "/")
                  for name in names if name.lower().endswith(EMBEDDING_EXTENSIONS)]
    return sorted(found)


def embedding_path(value) -> str:
    """The path of an embedding file in the input folder (a name that cannot leave it, with an
    embedding's extension, that is there); FileNotFoundError naming the input and folder otherwise."""
    import folder_paths

    from ..pipelines.local.instantid.face_input import EMBEDDING_EXTENSIONS

    where = folder_paths.get_input_directory()
    if isinstance(value, str) and not files.unsafe_name(value) and value.lower().endswith(EMBEDDING_EXTENSIONS):
        path = os.path.join(where, *value.split("/"))
        if os.path.isfile(path):
            return path
    if value is None or value == files.NONE_FOUND:
        raise FileNotFoundError(f"embedding: no .npy or .safetensors file in {where}; save the embedding there")
    raise FileNotFoundError(f"embedding: {value!r} is not a .npy or .safetensors file in {where}")


class InstantIDFacePrecomputed(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("InstantIDFacePrecomputed"), display_name="InstantID Face (precomputed)",
            category=CATEGORY_LOCAL,
            description="InstantID's face from numbers you already have, without face analysis: a 512-value ArcFace "
                        "embedding saved as .npy (numpy.save of insightface's face.embedding) or .safetensors in "
                        "ComfyUI's input folder, the five keypoints and the box in pixels of an image of the size "
                        "given. For Apply InstantID (native) and InstantID (local)'s face input.",
            inputs=[
                io.Combo.Input("embedding", options=files.or_none(embedding_files()),
                               tooltip="A .npy or .safetensors file in ComfyUI's input folder holding the 512 "
                                       "values of antelopev2's ArcFace embedding (as the recognizer gives it, "
                                       "not normalised)."),
                io.String.Input("keypoints", default="",
                                tooltip="Ten numbers: x, y of the left eye, right eye, nose, left and right mouth "
                                        "corner, in pixels, e.g. [[412.1, 380.5], [520.3, 377.9], ...] (the "
                                        "'keypoints' of Analyze Face's info) or 412.1 380.5 520.3 ..."),
                io.Int.Input("width", default=1024, min=8, max=16384,
                             tooltip="Width of the image the keypoints were measured on."),
                io.Int.Input("height", default=1024, min=8, max=16384,
                             tooltip="Height of the image the keypoints were measured on."),
                io.String.Input("bbox", default="", optional=True,
                                tooltip="Optional: the face box x1, y1, x2, y2 in pixels (needed by "
                                        "enhance_face_region)."),
            ],
            outputs=[FaceSocket.Output(display_name="face")],
        )

    @classmethod
    def validate_inputs(cls, embedding=None, keypoints=None, width=None, height=None, bbox=None) -> bool:
        """At queue time, every problem at once, one line per input: the file (a name inside the input
        folder; when it is there, its header an array of 512 floats), the keypoints and box text, the
        size. A file that is not there, like a linked input (None here), is reported when the node runs,
        so a graph whose unchosen branch lacks it still queues."""
        from ..pipelines.local.instantid.face_input import (FaceInputError, embedding_file_problem, parse_box,
                                                           parse_keypoints)

        lines = []
        if isinstance(embedding, str) and (reason := files.unsafe_name(embedding)):
            lines.append(f"embedding: {embedding!r} is not a .npy or .safetensors file in the input folder ({reason}); "
                         "choose one from the list")
        elif embedding is not None:
            try:
                problem = embedding_file_problem(embedding_path(embedding))
            except FileNotFoundError:
                problem = None      # reported when the node runs, as the loaders do: an unchosen branch still queues
            lines += [problem] if problem else []
        for value, parse in ((keypoints, parse_keypoints), (bbox, parse_box)):
            if value is not None:
                try:
                    parse(value)
                except FaceInputError as exc:
                    lines.append(str(exc))
        for name, value in (("width", width), ("height", height)):
            if value is not None and not 8 <= value <= 16384:
                lines.append(f"{name}: {value} is outside 8..16384")
        if lines:
            raise files.InputProblems(lines)
        return True

    @classmethod
    def execute(cls, embedding, keypoints, width, height, bbox="") -> io.NodeOutput:
        from ..pipelines.local.instantid.face_input import parse_box, parse_keypoints, precomputed_face, read_embedding

        return io.NodeOutput(precomputed_face(read_embedding(embedding_path(embedding)), parse_keypoints(keypoints),
                                              (width, height), parse_box(bbox)))


FACE_NODES = [FaceModelsLoader, FaceAnalysisNode, IdentitySimilarityNode, InstantIDFacePrecomputed]
