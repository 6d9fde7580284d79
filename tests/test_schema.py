"""The keypoint schema: flip pairs derived from joint names, the known layouts, schemas read from
annotation files and schema files, and every way one can be wrong (a one-line error naming
the joint or field)."""

import numpy as np
import pytest

from shards.schema import (AP10K, COCO_PERSON, CROWDPOSE, MPII, KeypointSchema, SchemaError,
                           apply_schema_file, flip_index_from_names, from_category, mirror,
                           stored)


@pytest.mark.parametrize("name, other", [
    ("left_knee", "right_knee"), ("right_front_paw", "left_front_paw"),
    ("Left Knee", "Right Knee"), ("l_wrist", "r_wrist"), ("R_Wrist", "L_Wrist"),
    ("LEFT_EAR", "RIGHT_EAR"), ("leftEye", "rightEye"), ("eye_left", "eye_right"),
    ("nose", None), ("lower_lip", None), ("head_top", None), ("r", None), ("thumb1", None),
])
def test_mirror_names(name, other):
    assert mirror(name) == other


def test_coco_person_is_the_layout_the_toolkit_always_had():
    """The values of the constants it replaced (shards/keypoints.py) and pycocotools' sigmas,
    bit for bit: COCO stays as it was."""
    from pycocotools.cocoeval import Params

    assert COCO_PERSON.names == (
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
        "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
        "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
    assert COCO_PERSON.flip_index == (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)
    assert COCO_PERSON.skeleton == (
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
    assert np.array_equal(np.asarray(COCO_PERSON.sigmas),
                          Params(iouType="keypoints").kpt_oks_sigmas)
    assert COCO_PERSON.torso() == (5, 6, 11, 12)
    assert stored({}) == COCO_PERSON  # shards and weights from before schemas travelled


def test_known_layouts_mirror_by_name():
    # AP-10K: left_eye, right_eye, nose, ... (the order COCO's flip would have scrambled)
    assert AP10K.flip_index[:3] == (1, 0, 2)
    assert AP10K.names[AP10K.flip_index[AP10K.names.index("left_back_paw")]] == "right_back_paw"
    assert CROWDPOSE.flip_index[-2:] == (12, 13)  # head and neck are their own mirrors
    assert MPII.names[MPII.flip_index[0]] == "left_ankle"
    assert MPII.torso() == (13, 12, 3, 2) and AP10K.torso() == (5, 8, 11, 14)
    hand = from_category(_category(["wrist", "thumb1", "thumb2"]), "h.json")
    assert hand.torso() is None and hand.flip_index == (0, 1, 2)
    for schema in (AP10K, CROWDPOSE, MPII):
        assert len(schema.sigmas) == schema.num_joints
        assert KeypointSchema.from_dict(schema.to_dict()) == schema


def _category(names, skeleton=None, **extra):
    return {"id": 7, "name": "thing", "keypoints": names,
            **({"skeleton": skeleton} if skeleton is not None else {}), **extra}


def test_a_schema_from_an_annotation_files_category():
    s = from_category(_category(["Left Tip", "Right Tip", "center"], [[1, 3], [2, 3]]), "x.json")
    assert s.flip_index == (1, 0, 2) and s.skeleton == ((0, 2), (1, 2))
    assert s.categories == (7,) and s.sigmas is None and "x.json" in s.source
    # the file's names are a known layout: its published schema, whatever the file's skeleton
    crowd = from_category(_category(list(CROWDPOSE.names), [[16, 14], [17, 15]]), "c.json")
    assert crowd.skeleton == CROWDPOSE.skeleton and crowd.sigmas == CROWDPOSE.sigmas


@pytest.mark.parametrize("category, message", [
    ({"id": 1, "name": "person"}, "has no 'keypoints' list"),
    (_category(["a", "b", "a"]), "joint 'a' is named twice"),
    (_category(["left_x", "center"]), "joint 'left_x' has a side but no 'right_x'"),
    (_category(["a", "b"], [[1, 3]]), r"skeleton edge \[1, 3\] is not two joint numbers 1..2"),
])
def test_bad_categories_are_one_line_errors(category, message):
    with pytest.raises(SchemaError, match=message) as e:
        from_category(category, "data.json")
    assert "data.json" in str(e.value) and "\n" not in str(e.value)


def test_a_schema_file_corrects_what_the_data_lacks(tmp_path):
    base = from_category(_category(["tip_a", "tip_b", "center"]), "x.json")
    path = tmp_path / "s.toml"
    path.write_text('name = "tongs"\nnames = ["tip_a", "tip_b", "center"]\n'
                    'flip_pairs = [["tip_a", "tip_b"]]\nskeleton = [["tip_a", "center"]]\n'
                    'sigmas = [0.05, 0.05, 0.1]\nweights = [1, 1, 0.5]\n')
    s = apply_schema_file(base, path)
    assert (s.name, s.flip_index, s.skeleton) == ("tongs", (1, 0, 2), ((0, 2),))
    assert s.sigmas == (0.05, 0.05, 0.1) and s.weights == (1.0, 1.0, 0.5)
    assert str(path) in s.source


@pytest.mark.parametrize("text, message", [
    ('names = ["tip_a", "center", "tip_b"]', r"names disagree .*first difference: center"),
    ('flip_pairs = [["tip_a", "nose"]]', "flip_pairs names joint 'nose', which the data"),
    ('flip_pairs = [["tip_a", "tip_b"], ["tip_b", "center"]]', "names joint 'tip_b' twice"),
    ("sigmas = [0.1, 0.1]", "sigmas: 2 values for 3 joints"),
    ("weights = [1, -1, 1]", "weights: joint tip_b has -1"),
    ("sigma = [1, 1, 1]", "unknown key sigma; valid keys: name, names, flip_pairs"),
    ("names = [", "invalid TOML"),
])
def test_a_schema_file_that_disagrees_is_refused_naming_the_joint(tmp_path, text, message):
    base = from_category(_category(["tip_a", "tip_b", "center"]), "x.json")
    path = tmp_path / "s.toml"
    path.write_text(text + "\n")
    with pytest.raises(SchemaError, match=message):
        apply_schema_file(base, path)


def test_inconsistent_schemas_are_refused():
    with pytest.raises(SchemaError, match="not mutual"):
        KeypointSchema(("a", "b", "c"), (1, 2, 0))
    with pytest.raises(SchemaError, match="skeleton edge"):
        KeypointSchema(("a", "b"), (0, 1), ((0, 2),))
    with pytest.raises(SchemaError, match="joint 'left_x' has a side"):
        flip_index_from_names(("left_x", "b"))
    with pytest.raises(SchemaError, match="do not fit together"):
        COCO_PERSON.check_same(CROWDPOSE, "the model", "the shards")
