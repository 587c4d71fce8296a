"""Tiny ONNX models with the antelopev2 signatures, built in the tests (the real ones are not
redistributable): a SCRFD-style detector (one input, nine outputs: scores, box distances and
keypoint distances at strides 8, 16 and 32, two anchors each) whose score is high where the image
is bright, and an ArcFace-style recognizer (112² in, 512 out) with fixed random weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _tensor(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def detector(path: Path, brightness_threshold: float = 0.55, seed: int = 7) -> Path:
    """Scores: sigmoid(12 * (mean pooled brightness − threshold)) per anchor; boxes and keypoints:
    small random linear functions of the pooled colour plus a bias that makes a box ~4 strides wide."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, initializers, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        pooled = f"pool{stride}"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [pooled], name=f"Pool_{stride}",
                                      kernel_shape=[stride, stride], strides=[stride, stride]))
        for kind, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
            out_channels = 2 * channels                           # two anchors per position
            if kind == "score":
                weight = np.full((out_channels, 3, 1, 1), 12.0 / 3)
                bias = np.full(out_channels, -12.0 * (brightness_threshold * 2 - 1) / 1.0)
            elif kind == "bbox":
                weight = rng.normal(0, 0.2, (out_channels, 3, 1, 1))
                bias = np.full(out_channels, 2.0)
            else:
                weight = rng.normal(0, 0.3, (out_channels, 3, 1, 1))
                bias = rng.normal(0, 0.8, out_channels)
            w, b = f"{kind}_w{stride}", f"{kind}_b{stride}"
            initializers += [_tensor(w, weight), _tensor(b, bias)]
            conv, transposed, result = f"{kind}_conv{stride}", f"{kind}_t{stride}", f"{kind}_{stride}"
            nodes.append(helper.make_node("Conv", [pooled, w, b], [conv], name=f"Conv_{kind}{stride}"))
            source = conv
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [f"{conv}_s"], name=f"Sigmoid_{stride}"))
                source = f"{conv}_s"
            nodes.append(helper.make_node("Transpose", [source], [transposed], name=f"Transpose_{kind}{stride}",
                                          perm=[0, 2, 3, 1]))
            shape = f"{kind}_shape{stride}"
            initializers.append(helper.make_tensor(shape, TensorProto.INT64, [2], [-1, channels]))
            nodes.append(helper.make_node("Reshape", [transposed, shape], [result], name=f"Reshape_{kind}{stride}"))
            outputs[kind].append(helper.make_tensor_value_info(result, TensorProto.FLOAT, ["n", channels]))
    graph = helper.make_graph(
        nodes, "scrfd_tiny", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def recognizer(path: Path, seed: int = 11) -> Path:
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], name="Pool_0", kernel_shape=[14, 14], strides=[14, 14]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="Flatten_0"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["683"], name="Gemm_0", transB=1),
    ]
    initializers = [_tensor("fc_w", rng.normal(0, 1.0, (512, 192))), _tensor("fc_b", rng.normal(0, 0.1, 512))]
    graph = helper.make_graph(nodes, "arcface_tiny",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def antelopev2(folder: Path) -> Path:
    """A folder laid out like models/insightface/models/antelopev2/ with the two files InstantID uses."""
    folder.mkdir(parents=True, exist_ok=True)
    detector(folder / "scrfd_10g_bnkps.onnx")
    recognizer(folder / "glintr100.onnx")
    return folder


def scene(*boxes, size=(320, 240)) -> Image.Image:
    """Black, with white squares where the tiny detector should see faces."""
    image = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.rectangle(box, fill=(255, 255, 255))
    return image
