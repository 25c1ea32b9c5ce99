"""Every kind of artifact, reported the ClearML way: only the import differs.

Run from this folder (it reads data_samples/). The script makes the same calls,
with the same parameters, as ClearML's reporting example for artifacts, then
prints where each artifact landed.
"""

import os
from time import sleep

import numpy as np
import pandas as pd
from PIL import Image

from artisync import Task

task = Task.init(project_name="examples", task_name="artifacts example")

animals = pd.DataFrame(
    {"num_legs": [2, 4, 8, 0], "num_wings": [2, 0, 0, 0], "num_specimen_seen": [10, 2, 1, 8]},
    index=["falcon", "dog", "spider", "fish"],
)

# A registered DataFrame is watched: each change in place becomes a new version.
task.register_artifact("train", animals, metadata={"counting": "legs", "max legs": 69})
animals.sample(frac=0.5, replace=True, random_state=1)
Task.current_task().get_registered_artifacts()["train"].sample(
    frac=0.5, replace=True, random_state=1
)

# One-time snapshots, one per type.
task.upload_artifact("Pandas", artifact_object=animals)
task.upload_artifact("local file", artifact_object=os.path.join("data_samples", "dancing.jpg"))
task.upload_artifact("dictionary", animals.to_dict())
task.upload_artifact("Numpy Eye", np.eye(100, 100))
task.upload_artifact("pillow_image", Image.open(os.path.join("data_samples", "dancing.jpg")))
task.upload_artifact("local folder", artifact_object=os.path.join("data_samples"))
task.upload_artifact("wildcard jpegs", artifact_object=os.path.join("data_samples", "*.jpg"))

sleep(1.0)
animals.loc["ant"] = [6, 0, 100]  # the tracked frame grows: a second version of "train"
print(animals)

task.close()  # returns once everything is in the spool; uploads go on in the daemon
print(f"task {task.id} -> {task.output_uri}")
for name, artifact in sorted(task.artifacts.items()):
    print(f"  {name:16} {artifact.type:9} {artifact.size:>9} B  {artifact.url}")
