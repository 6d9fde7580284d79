"""Evaluation: one core that runs a model over a split (core.py), used by training validation
and `shg eval` (runner.py); PCK and its normalisations (pck.py), the COCO protocol (protocol.py),
COCO AP (coco.py) and the visual report (report.py). Heatmap decoding is the codec's
(shards/codec.py), the joints the keypoint schema's (shards/schema.py)."""
