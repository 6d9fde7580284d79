"""Evaluation: one core that runs a model over a split (core.py), used by training validation
and `shg eval` (runner.py); PCK and its normalisations (pck.py), heatmap decoding (decode.py),
COCO AP (coco.py) and the visual report (report.py)."""
