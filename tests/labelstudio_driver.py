"""Drives a real Label Studio with label-studio-sdk as a labeller's session would: runs in Label
Studio's own virtualenv (tests/labelstudio_server.py), so it imports nothing of this project.

    python labelstudio_driver.py SPEC.json REPORT.json

SPEC: {"url", "token", "config": config.xml, "tasks": tasks.json, "storage": images folder
(a local-files storage, so the tasks' image URLs are served), "edits": {image id: [{"op":
"move", "region": id, "x": px, "y": py} | {"op": "delete", "region": id}]}, "cancel": [image
ids skipped by the labeller], "out": where the JSON export goes}.

Every task's prediction becomes the labeller's annotation (Label Studio's "accept the
pre-annotation"), with the spec's edits: a moved joint gets its new position in percent of the
image (both its keypoint result and its per-region choice, as the editor moves both), a deleted
joint loses its results. Then the project is exported as JSON (all tasks)."""

import copy
import json
import sys
import urllib.request

from label_studio_sdk import LabelStudio


def main(spec_path: str, report_path: str) -> None:
    spec = json.load(open(spec_path))
    ls = LabelStudio(base_url=spec["url"], api_key=spec["token"])
    config = open(spec["config"]).read()
    project = ls.projects.create(title="shg round trip", label_config=config)
    if spec.get("storage"):
        ls.import_storage.local.create(project=project.id, path=spec["storage"],
                                       title="images", use_blob_urls=True)
    tasks = json.load(open(spec["tasks"]))
    imported = ls.projects.import_tasks(id=project.id, request=tasks, return_task_ids=True)
    edits = {str(k): v for k, v in (spec.get("edits") or {}).items()}
    cancel = {str(i) for i in spec.get("cancel") or []}
    report = {"project": project.id, "imported": imported.task_count, "annotations": 0,
              "moved": 0, "deleted": 0, "cancelled": 0}
    served = None
    for task in ls.tasks.list(project=project.id, fields="all"):
        image_id = str(task.data["image_id"])
        if served is None and spec.get("storage"):
            request = urllib.request.Request(spec["url"] + task.data["image"],
                                             headers={"Authorization": f"Token {spec['token']}"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                served = {"file_name": task.data["file_name"], "status": answer.status,
                          "bytes": len(answer.read())}
        if image_id in cancel:
            ls.annotations.create(id=task.id, result=[], was_cancelled=True)
            report["cancelled"] += 1
            continue
        (prediction,) = task.predictions
        result = copy.deepcopy(prediction["result"] if isinstance(prediction, dict)
                               else prediction.result)
        for edit in edits.get(image_id, []):
            mine = [r for r in result if r.get("id") == edit["region"]]
            assert mine, f"task of image {image_id} has no region {edit['region']}"
            if edit["op"] == "move":
                for r in mine:
                    r["value"]["x"] = edit["x"] / r["original_width"] * 100.0
                    r["value"]["y"] = edit["y"] / r["original_height"] * 100.0
                report["moved"] += 1
            elif edit["op"] == "delete":
                result = [r for r in result if r.get("id") != edit["region"]]
                report["deleted"] += 1
        ls.annotations.create(id=task.id, result=result, was_cancelled=False,
                              parent_prediction=prediction["id"] if isinstance(prediction, dict)
                              else prediction.id)
        report["annotations"] += 1
    exported = b"".join(ls.projects.exports.download_sync(
        id=project.id, export_type="JSON", download_all_tasks=True))
    open(spec["out"], "wb").write(exported)
    report["served"] = served
    report["exported_tasks"] = len(json.loads(exported))
    json.dump(report, open(report_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:])
