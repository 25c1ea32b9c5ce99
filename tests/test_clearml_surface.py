"""ClearML's calls around the artifact ones, in a script written as for ClearML, run
end to end against a real daemon; read back from another process and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import DaemonProc, Env, run_py

SCRIPT = """
import argparse, logging, os, sys
import numpy as np
import pandas as pd
from artisync import Logger, Task

task = Task.init(
    project_name="examples", task_name="clearml style", task_type="training", tags=["a"],
    reuse_last_task_id=False, continue_last_task=False, output_uri=True,
    auto_connect_arg_parser=False, auto_connect_frameworks=False, auto_resource_monitoring=False,
)
params = {"lr": 0.1, "optimizer": {"name": "adam", "beta": 0.9}}
assert task.connect(params) is params
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
args = task.connect(parser.parse_args([]))
class Cfg:
    depth = 4
    def method(self): pass
task.connect(Cfg(), name="Model")
assert task.connect_configuration({"layers": [64, 64]}, name="net") == {"layers": [64, 64]}
cfg_file = os.path.join(sys.argv[1], "train.yaml")
open(cfg_file, "w").write("batch: 32\\n")
assert task.connect_configuration(cfg_file, name="file", description="from disk") == cfg_file
task.set_parameter("extra", 7)
task.add_tags(["b"])
task.set_comment("a comment")
assert task.execute_remotely(queue_name="default", exit_process=True) is None
params["lr"] = 0.2  # an edit after connect: recorded at close
try:
    task.enqueue
except NotImplementedError as exc:
    assert "enqueue" in str(exc)
else:
    raise AssertionError("no NotImplementedError")
try:
    task.no_such_thing
except AttributeError:
    pass
logger = task.get_logger()
assert Logger.current_logger() is logger
for i in range(10_000):
    logger.report_scalar("loss", "train", 1.0 / (i + 1), iteration=i)
logger.report_single_value("accuracy", 0.93)
logger.report_text("epoch done")
logger.report_table("preds", "val", iteration=3, table_plot=pd.DataFrame({"y": [1, 2]}))
logger.report_image("sample", "val", iteration=3, matrix=np.zeros((8, 8), dtype=np.uint8))
logger.report_plotly("curve", "val", figure={"data": [{"y": [1, 2, 3]}]})
assert logger.report_matplotlib_figure("bad", "call", figure=object()) is None  # never raises
assert task.get_output_destination() == task.output_uri
print(task.id, Task.get_project_id("examples"))
task.close()
assert Task.current_task() is None
"""


def test_a_clearml_script_runs_and_reads_back(daemon: DaemonProc, env: Env) -> None:
    out = run_py(env, f"import sys; sys.argv = ['s', {str(env.root)!r}]\n" + SCRIPT)
    task_id, project_id = out.stdout.split()[-2:]
    assert project_id == "examples"
    assert "failed" in out.stderr  # the bad matplotlib call was logged, not raised
    check = run_py(
        env,
        """
        import json
        from artisync import Task
        t = Task.get_task(project_name="examples", task_name="clearml style")
        arts = t.artifacts
        scalars = arts["scalars"].get()
        print(json.dumps({
            "params": t.get_parameters(),
            "cast": t.get_parameters_as_dict(cast=True),
            "tags": t.get_tags(),
            "comment": t.comment,
            "net": t.get_configuration_object_as_dict("net"),
            "file": t.get_configuration_object("file"),
            "names": sorted(arts),
            "rows": len(scalars["value"]),
            "last": [scalars["iteration"][-1], scalars["value"][-1]],
            "single": arts["single values"].get(),
            "console": arts["console"].get(),
        }))
        """,
    )
    got = json.loads(check.stdout.splitlines()[-1])
    assert got["params"] == {
        "General/lr": "0.2",
        "General/optimizer/name": "adam",
        "General/optimizer/beta": "0.9",
        "General/extra": "7",
        "Args/epochs": "3",
        "Model/depth": "4",
    }
    assert got["cast"]["General"]["lr"] == 0.2 and got["cast"]["Args"]["epochs"] == 3
    assert got["tags"] == ["a", "b"] and got["comment"] == "a comment"
    assert got["net"] == {"layers": [64, 64]} and got["file"] == "batch: 32\n"
    assert got["names"] == [
        "console",
        "image: sample - val",
        "plotly: curve - val",
        "scalars",
        "single values",
        "table: preds - val",
    ]
    assert got["rows"] == 10_000 and got["last"] == [9999, 1.0 / 10_000]
    assert got["single"] == {"accuracy": 0.93} and got["console"] == "epoch done\n"
    ls = subprocess.run(
        [sys.executable, "-m", "artisync.cli", "ls", "examples", "clearml style"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "# param General/lr = 0.2" in ls.stdout and "# configuration net" in ls.stdout
    assert task_id in ls.stdout
