"""Prediction with a trained model: one `Predictor` that images, folders, videos and cameras go
through, and what sits beside it.

    from shg.inference import Predictor

    predictor = Predictor.from_weights("model.safetensors")   # on the GPU when there is one
    for frame in predictor.predict_folder("photos/"):          # persons by the person detector
        print(frame.source, [person["score"] for person in frame.persons])
    persons = predictor.predict_image("photo.jpg", whole_image=True).persons

Modules: predictor.py (the Predictor and its steps), frames.py (Frame, Persons: what flows
through it, and the results stream's line format), images.py and video.py (reading image files,
video files and cameras; the drawn video), detector.py (torchvision's person detectors),
tracking.py (track ids, One-Euro smoothing), draw.py (skeletons on images), stream.py
(results.jsonl, results.json and detections.json made from it), command.py (`shg predict`),
onnx_export.py (`shg export --format onnx`). docs/prediction.md is the user's guide.
"""

from .frames import Frame, Persons
from .predictor import Predictor

__all__ = ["Frame", "Persons", "Predictor"]
