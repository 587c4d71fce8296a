"""Face analysis on tiny ONNX models with the antelopev2 signatures: the same boxes, keypoints and
embeddings as insightface's own FaceAnalysis on the same files, and clear errors for what users meet."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import face_models
from face_models import scene
from pipelines.local.faces import (FaceAnalysisError, FaceAnalyzer, find_antelopev2, image_to_bgr, umeyama)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return face_models.antelopev2(tmp_path_factory.mktemp("insightface") / "models" / "antelopev2")


@pytest.fixture(scope="module")
def analyzer(folder):
    return FaceAnalyzer(folder)


@pytest.fixture(scope="module")
def insightface_app(folder):
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(folder), root=str(folder.parent), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))        # as the InstantID reference prepares it
    return app


def photographs():
    """A real photograph (scikit-image's astronaut), a portrait crop of it, a small one, and a JPEG."""
    import io

    from skimage import data

    photo = Image.fromarray(data.astronaut())
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    return {"astronaut": photo, "portrait": photo.crop((100, 0, 380, 512)), "small": photo.resize((150, 150)),
            "jpeg": Image.open(buffer)}


@pytest.mark.parametrize("name", ["astronaut", "portrait", "small", "jpeg"])
def test_the_same_faces_as_insightface_on_the_same_models(analyzer, insightface_app, name):
    image = photographs()[name]
    ours = analyzer.analyze(image)
    theirs = insightface_app.get(image_to_bgr(image))
    assert len(ours) == len(theirs) > 0
    for face, reference in zip(ours, theirs):
        assert np.array_equal(face.bbox, reference.bbox) and np.array_equal(face.kps, reference.kps)
        assert face.score == pytest.approx(float(reference.det_score), abs=1e-7)
        relative = np.abs(face.embedding - reference.embedding).max() / np.abs(reference.embedding).max()
        assert relative < 1e-4


def test_the_alignment_transform_is_the_least_squares_similarity():
    """Against scikit-image's estimator (what insightface uses), on random keypoints."""
    from skimage import transform

    rng = np.random.default_rng(0)
    for _ in range(20):
        src = (rng.random((5, 2)) * 300).astype(np.float32)
        dst = (rng.random((5, 2)) * 112).astype(np.float32)
        expected = transform.SimilarityTransform()
        expected._estimate(src, dst)
        assert np.allclose(umeyama(src, dst), expected.params, atol=1e-6)


def test_no_face_is_a_clear_error(analyzer):
    with pytest.raises(FaceAnalysisError, match=r"no face found in the reference image \(320x240\)"):
        analyzer.largest_face(scene())


def test_of_several_faces_the_largest_is_used(analyzer):
    image = scene((20, 20, 60, 60), (150, 60, 300, 210))
    faces = analyzer.analyze(image)
    assert len(faces) > 1
    largest = analyzer.largest_face(image)
    assert largest.area == max(face.area for face in faces) > min(face.area for face in faces)
    assert largest.embedding is not None and largest.embedding.shape == (512,)


def test_a_face_too_small_is_refused(folder, monkeypatch):
    import pipelines.local.faces as faces

    analyzer = FaceAnalyzer(folder)
    monkeypatch.setattr(faces, "MIN_FACE_SIDE", 10_000)
    with pytest.raises(FaceAnalysisError, match="px wide; at least 10000 px is needed"):
        analyzer.largest_face(scene((150, 60, 300, 210)))


class CountingSession:
    def __init__(self, session):
        self.session, self.calls = session, 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_results_are_cached_per_image_content(folder):
    analyzer = FaceAnalyzer(folder)
    analyzer.detector = counting = CountingSession(analyzer.detector)
    image = scene((150, 60, 300, 210))
    first = analyzer.analyze(image)
    again = analyzer.analyze(image.copy())                  # same pixels, another object
    assert first is again and counting.calls == 1
    analyzer.analyze(scene((10, 10, 200, 200)))
    assert counting.calls == 2


def test_a_nested_antelopev2_folder_is_found(folder, tmp_path):
    import shutil

    nested = tmp_path / "antelopev2" / "antelopev2"
    shutil.copytree(folder, nested)
    assert find_antelopev2(tmp_path / "antelopev2") == nested
    assert FaceAnalyzer(tmp_path / "antelopev2").folder == nested


def test_missing_model_files_are_named_with_where_to_get_them(tmp_path):
    (tmp_path / "antelopev2").mkdir()
    (tmp_path / "antelopev2" / "1k3d68.onnx").write_bytes(b"x")
    with pytest.raises(FaceAnalysisError, match=r"lacks scrfd_10g_bnkps.onnx and glintr100.onnx \(found: 1k3d68.onnx\)"
                                                r".*insightface model zoo"):
        FaceAnalyzer(tmp_path / "antelopev2")


def test_a_damaged_model_file_says_so(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "antelopev2")
    (tmp_path / "antelopev2" / "glintr100.onnx").write_bytes(b"not a model")
    with pytest.raises(FaceAnalysisError, match="cannot load .*glintr100.onnx .* the file may be incomplete"):
        FaceAnalyzer(tmp_path / "antelopev2")


def test_asking_for_cuda_without_it_runs_on_the_cpu(folder):
    analyzer = FaceAnalyzer(folder, device="cuda")
    assert analyzer.provider == "CPU" and analyzer.analyze(photographs()["small"])


def test_identity_scores_compare_the_largest_faces_and_say_none_without_one(analyzer):
    from pipelines.identity import annotate, cosine, identity_scores

    reference = scene((150, 60, 300, 210))
    other = scene((20, 20, 120, 120), (200, 100, 260, 160))
    scores = identity_scores(analyzer, reference, [reference.copy(), other, scene()])
    assert scores[0].score == pytest.approx(1.0, abs=1e-6)
    expected = cosine(analyzer.largest_face(reference).embedding, analyzer.largest_face(other).embedding)
    assert scores[1].score == pytest.approx(expected) and scores[1].score < 0.999
    assert scores[2].score is None and scores[2].text() == "none (no face found)"
    assert cosine(np.array([1.0, 0.0]), np.array([-2.0, 0.0])) == -1.0
    marked = annotate(reference, "identity 1.000")
    assert marked.size == reference.size and np.asarray(marked)[2, 2].tolist() == [0, 0, 0]
    assert (np.asarray(marked) != np.asarray(reference)).any()
