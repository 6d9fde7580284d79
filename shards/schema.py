"""The keypoint schema: which joints a dataset labels, in which order, how they mirror, how they
connect, and (optionally) their OKS sigmas and loss weights. One schema travels with the data and
the model: the shard builder records it in the manifest, training in every checkpoint and
exported weights, the ONNX export in its metadata, and everything that needs to know a joint
reads it from there (flip augmentation, targets, PCK, OKS, COCO AP, drawings, clustering).

Where a schema comes from, first match wins:

1. a schema file (`shg shards build --schema FILE`, TOML: names, flip_pairs, skeleton,
   sigmas, weights, protocol; each optional, names must be the data's);
2. a known layout whose joint names the data's equal (COCO person, MPII, CrowdPose, AP-10K:
   their published flip pairs, skeletons and OKS sigmas);
3. the annotation file's category: `keypoints` (names) and `skeleton` (1-based), the flip
   pairs derived from the names (left_x/right_x, Left X/Right X, l_x/r_x, L_X/R_X, leftX/
   rightX; a name with no side is its own mirror).

A schema that cannot be resolved or is inconsistent is a SchemaError (one line, naming the
joint or the field).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .manifest import DataError


class SchemaError(DataError):
    """A keypoint schema that cannot work (one line naming the joint or field)."""


OKS_PROTOCOLS = {
    "auto": "each annotation's area where it has one, else 0.53 x its box's width x height",
    "area": "each annotation's area (COCO's protocol: COCO, OCHuman, AP-10K)",
    "bbox": "0.53 x each annotation's box width x height (CrowdPose's and AI Challenger's: "
            "xtcocotools' use_area=False)"}
"""The OKS scale of COCO AP (`protocol` in a schema file, `shg eval --protocol`): the choices."""


@dataclass(frozen=True, eq=True)
class KeypointSchema:
    names: tuple[str, ...]
    flip_index: tuple[int, ...]
    """flip_index[k]: the joint k becomes in a mirrored image (itself when it has no side)."""
    skeleton: tuple[tuple[int, int], ...] = ()
    """Pairs of joint indices (0-based) drawn as limbs."""
    sigmas: tuple[float, ...] | None = None
    """Per-joint OKS sigmas (COCO AP, OKS-NMS); None: COCO AP is unavailable."""
    weights: tuple[float, ...] | None = None
    """Per-joint loss weights (None: all 1)."""
    name: str = ""
    """What the schema is ("coco-person", the category's name, ...)."""
    categories: tuple[int, ...] = ()
    """The annotation file's category ids with this keypoint list (empty: not from a file)."""
    source: str = ""
    """Where it came from: a known layout, the annotation file, a schema file."""
    protocol: str = "auto"
    """The OKS scale of COCO AP (OKS_PROTOCOLS); "auto" decides from the annotations."""

    def __post_init__(self) -> None:
        if self.protocol not in OKS_PROTOCOLS:
            raise SchemaError(f"protocol {self.protocol!r} is not one of "
                              f"{', '.join(OKS_PROTOCOLS)}")
        k = len(self.names)
        if k < 1:
            raise SchemaError("a keypoint schema needs at least one joint")
        seen = set()
        for n in self.names:
            if not isinstance(n, str) or not n:
                raise SchemaError(f"joint names must be non-empty strings, got {n!r}")
            if n in seen:
                raise SchemaError(f"joint {n!r} is named twice")
            seen.add(n)
        if len(self.flip_index) != k or any(not 0 <= j < k for j in self.flip_index):
            raise SchemaError(f"flip_index must give each of the {k} joints a joint 0..{k - 1}")
        for i, j in enumerate(self.flip_index):
            if self.flip_index[j] != i:
                raise SchemaError(f"flip pairs are not mutual: {self.names[i]} mirrors to "
                                  f"{self.names[j]}, which mirrors to "
                                  f"{self.names[self.flip_index[j]]}")
        for a, b in self.skeleton:
            if not (0 <= a < k and 0 <= b < k):
                raise SchemaError(f"skeleton edge ({a}, {b}) names a joint outside 0..{k - 1}")
        for what, values, low in (("sigmas", self.sigmas, 0.0), ("weights", self.weights, None)):
            if values is None:
                continue
            if len(values) != k:
                raise SchemaError(f"{what}: {len(values)} values for {k} joints")
            bad = [self.names[i] for i, v in enumerate(values)
                   if not isinstance(v, (int, float)) or (v <= low if low is not None else v < 0)]
            if bad:
                raise SchemaError(f"{what}: joint {bad[0]} has {values[self.names.index(bad[0])]!r}"
                                  f" (must be {'> 0' if low is not None else '>= 0'})")

    # ------------------------------------------------------------------------- questions
    @property
    def num_joints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    def torso(self) -> tuple[int, int, int, int] | None:
        """(left shoulder, right shoulder, left hip, right hip) when all four are named."""
        found = [self.index(n) for n in ("left_shoulder", "right_shoulder", "left_hip",
                                         "right_hip")]
        return None if None in found else tuple(found)  # type: ignore[return-value]

    def describe(self) -> str:
        return (f"{self.name or 'keypoints'} ({self.num_joints} joints: "
                f"{', '.join(self.names[:4])}{', ...' if self.num_joints > 4 else ''})")

    def check_same(self, other: "KeypointSchema", mine: str, theirs: str) -> None:
        """A one-line error when `other` labels other joints than this schema."""
        if self.names != other.names:
            raise SchemaError(f"{mine} has {self.describe()}, {theirs} has "
                              f"{other.describe()}: they do not fit together")

    # ------------------------------------------------------------------------- storage
    def to_dict(self) -> dict:
        return {"name": self.name, "names": list(self.names), "flip_index": list(self.flip_index),
                "skeleton": [list(e) for e in self.skeleton],
                "sigmas": None if self.sigmas is None else list(self.sigmas),
                "weights": None if self.weights is None else list(self.weights),
                "categories": list(self.categories), "source": self.source,
                **({} if self.protocol == "auto" else {"protocol": self.protocol})}

    @classmethod
    def from_dict(cls, d: dict) -> "KeypointSchema":
        return cls(names=tuple(d["names"]), flip_index=tuple(d["flip_index"]),
                   skeleton=tuple(tuple(e) for e in d.get("skeleton") or ()),
                   sigmas=None if d.get("sigmas") is None else tuple(d["sigmas"]),
                   weights=None if d.get("weights") is None else tuple(d["weights"]),
                   name=d.get("name", ""), categories=tuple(d.get("categories") or ()),
                   source=d.get("source", ""), protocol=d.get("protocol", "auto"))


def stored(entry: dict | None) -> KeypointSchema:
    """The schema a manifest split entry or a weights file's metadata records; COCO person for
    what was written before schemas travelled (the toolkit knew no other layout then)."""
    found = (entry or {}).get("schema")
    return KeypointSchema.from_dict(found) if found else COCO_PERSON


# ----------------------------------------------------------------------------- flip pairs
_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}
_SEPARATED = re.compile(r"([_\s\-.]+)")
_PREFIX = re.compile(r"^(left|right|Left|Right|LEFT|RIGHT)(?=[A-Z0-9])")


def _like(word: str, template: str) -> str:
    if template.isupper():
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def mirror(name: str) -> str | None:
    """The joint name on the other side (left_knee -> right_knee, L_Wrist -> R_Wrist,
    leftEye -> rightEye), or None when the name has no side."""
    parts = _SEPARATED.split(name)
    for i, part in enumerate(parts):
        side = _SIDES.get(part.lower())
        if side is not None and (len(part) > 1 or len(parts) > 1):
            return "".join(parts[:i] + [_like(side, part)] + parts[i + 1:])
    m = _PREFIX.match(name)
    if m:
        return _like(_SIDES[m.group(1).lower()], m.group(1)) + name[m.end():]
    return None


def flip_index_from_names(names: tuple[str, ...], where: str = "") -> tuple[int, ...]:
    index = {n: i for i, n in enumerate(names)}
    flip = []
    for i, n in enumerate(names):
        other = mirror(n)
        if other is None:
            flip.append(i)
        elif other in index:
            flip.append(index[other])
        else:
            raise SchemaError(f"{where}joint {n!r} has a side but no {other!r} among the joints; "
                              "give its mirror in a schema file (flip_pairs)")
    return tuple(flip)


# ----------------------------------------------------------------------------- known layouts
def _known(name: str, names: str, pairs: list[tuple[int, int]], sigmas: list[float] | None,
           source: str) -> KeypointSchema:
    names_t = tuple(names.split())
    return KeypointSchema(names_t, flip_index_from_names(names_t), tuple(pairs),
                          None if sigmas is None else tuple(sigmas), name=name, source=source)


COCO_PERSON = _known(
    "coco-person",
    "nose left_eye right_eye left_ear right_ear left_shoulder right_shoulder left_elbow "
    "right_elbow left_wrist right_wrist left_hip right_hip left_knee right_knee left_ankle "
    "right_ankle",
    [(15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
     (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)],
    # pycocotools' own expression (COCOeval's defaults), so COCO AP stays bit-identical
    [v / 10.0 for v in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87,
                        .87, .89, .89)], "built in: COCO person keypoints (pycocotools' sigmas)")
MPII = _known(
    "mpii",
    "right_ankle right_knee right_hip left_hip left_knee left_ankle pelvis thorax upper_neck "
    "head_top right_wrist right_elbow right_shoulder left_shoulder left_elbow left_wrist",
    [(0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12),
     (12, 7), (13, 7), (13, 14), (14, 15)],
    [.089, .083, .107, .107, .083, .089, .026, .026, .026, .026, .062, .072, .179, .179, .072,
     .062], "built in: MPII (mmpose's sigmas)")
CROWDPOSE = _known(
    "crowdpose",
    "left_shoulder right_shoulder left_elbow right_elbow left_wrist right_wrist left_hip "
    "right_hip left_knee right_knee left_ankle right_ankle head neck",
    [(12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (13, 7), (13, 6), (7, 9),
     (9, 11), (6, 8), (8, 10)],
    [.079, .079, .072, .072, .062, .062, .107, .107, .087, .087, .089, .089, .079, .079],
    "built in: CrowdPose (mmpose's skeleton and sigmas)")
AP10K = _known(
    "ap10k",
    "left_eye right_eye nose neck root_of_tail left_shoulder left_elbow left_front_paw "
    "right_shoulder right_elbow right_front_paw left_hip left_knee left_back_paw right_hip "
    "right_knee right_back_paw",
    [(0, 1), (0, 2), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (3, 8), (8, 9), (9, 10),
     (4, 11), (11, 12), (12, 13), (4, 14), (14, 15), (15, 16)],
    [.025, .025, .026, .035, .035, .079, .072, .062, .079, .072, .062, .107, .087, .089, .107,
     .087, .089], "built in: AP-10K (mmpose's sigmas)")
KNOWN = (COCO_PERSON, MPII, CROWDPOSE, AP10K)


def known_layout(names: tuple[str, ...]) -> KeypointSchema | None:
    return next((s for s in KNOWN if s.names == tuple(names)), None)


# ----------------------------------------------------------------------------- from data
def from_category(category: dict, where: str, categories: tuple[int, ...] = ()
                  ) -> KeypointSchema:
    """The schema of an annotation file's category (`where` names the file in errors)."""
    names = category.get("keypoints")
    label = f"{where}: category {category.get('name', category.get('id'))!r}"
    if not isinstance(names, list) or not names:
        raise SchemaError(f"{label} has no 'keypoints' list: not a keypoint category")
    names = tuple(str(n) for n in names)
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise SchemaError(f"{label}: joint {twice!r} is named twice")
    cats = categories or ((category["id"],) if "id" in category else ())
    known = known_layout(names)
    if known is not None:
        return _replace(known, categories=cats)
    skeleton = []
    for edge in category.get("skeleton") or []:
        if not (isinstance(edge, list) and len(edge) == 2
                and all(isinstance(v, int) and 1 <= v <= len(names) for v in edge)):
            raise SchemaError(f"{label}: skeleton edge {edge!r} is not two joint numbers "
                              f"1..{len(names)} (COCO's skeleton is 1-based); give a skeleton "
                              "in a schema file")
        skeleton.append((edge[0] - 1, edge[1] - 1))
    return KeypointSchema(names, flip_index_from_names(names, f"{label}: "), tuple(skeleton),
                          name=str(category.get("name", "")), categories=cats,
                          source=f"annotation file {where}")


def _replace(schema: KeypointSchema, **changes) -> KeypointSchema:
    return KeypointSchema(**{**schema.__dict__, **changes})


SCHEMA_KEYS = ("name", "names", "flip_pairs", "skeleton", "sigmas", "weights", "protocol")


def apply_schema_file(schema: KeypointSchema, path: str | Path) -> KeypointSchema:
    """`schema` with what a schema file (TOML) sets: its names must be the data's."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{path}: invalid TOML ({exc})") from None
    unknown = sorted(set(raw) - set(SCHEMA_KEYS))
    if unknown:
        raise SchemaError(f"{path}: unknown key {unknown[0]}; valid keys: {', '.join(SCHEMA_KEYS)}")
    names = schema.names
    if "names" in raw and tuple(raw["names"]) != names:
        theirs = list(raw["names"])
        first = next((a for a, b in zip(theirs, names) if a != b), None) or \
            f"{len(theirs)} joints, the data has {len(names)}"
        raise SchemaError(f"{path}: names disagree with the annotation file's keypoints (first "
                          f"difference: {first})")

    def index(joint, key: str) -> int:
        if joint not in names:
            raise SchemaError(f"{path}: {key} names joint {joint!r}, which the data does not "
                              f"have ({', '.join(names[:5])}, ...)")
        return names.index(joint)

    changes: dict = {"source": f"schema file {path}"}
    if "name" in raw:
        changes["name"] = str(raw["name"])
    if "protocol" in raw:
        if not isinstance(raw["protocol"], str) or raw["protocol"] not in OKS_PROTOCOLS:
            raise SchemaError(f"{path}: protocol {raw['protocol']!r} is not one of "
                              f"{', '.join(OKS_PROTOCOLS)}")
        changes["protocol"] = raw["protocol"]
    if "flip_pairs" in raw:
        flip = list(range(len(names)))
        for pair in raw["flip_pairs"]:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise SchemaError(f"{path}: flip_pairs entries are [left, right], got {pair!r}")
            a, b = index(pair[0], "flip_pairs"), index(pair[1], "flip_pairs")
            if flip[a] != a or flip[b] != b:
                raise SchemaError(f"{path}: flip_pairs names joint "
                                  f"{names[a] if flip[a] != a else names[b]!r} twice")
            flip[a], flip[b] = b, a
        changes["flip_index"] = tuple(flip)
    if "skeleton" in raw:
        changes["skeleton"] = tuple((index(a, "skeleton"), index(b, "skeleton"))
                                    for a, b in raw["skeleton"])
    for key in ("sigmas", "weights"):
        if key in raw:
            changes[key] = tuple(float(v) for v in raw[key])
    try:
        return _replace(schema, **changes)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from None
