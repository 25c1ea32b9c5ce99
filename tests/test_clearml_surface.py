"""ClearML's calls around the artifact ones, in a script written as for ClearML, run
end to end against a real daemon; read back from another process and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
parser.add_argument("--amp", action="store_true")
parser.add_argument("--sizes", type=int, nargs="*", default=[1, 2])
assert task.connect(parser) is parser  # as ClearML: the parser, its values under Args
assert task.connect(argparse.Namespace(seed=7)).seed == 7  # an object: under General
class Cfg:
    depth = 4
    def method(self): pass
task.connect(Cfg, name="Model")  # a class: its public attributes
cfg = Cfg()
cfg.width = 8
task.connect(cfg, name="Instance")  # an instance: its own attributes only, as ClearML's
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
assert Logger.current_logger() is logger and task.logger is logger
for i in range(10_000):
    logger.report_scalar("loss", "train", 1.0 / (i + 1), iteration=i)
logger.report_single_value("accuracy", 0.93)
logger.report_text("epoch done")  # printed too, as ClearML's
logger.report_text("quiet line", print_console=False)
logger.report_image("float", "val", iteration=3, image=np.full((4, 6, 3), 0.5))
logger.report_histogram("hist", "val", np.array([1, 5, 2]), 3, xaxis="bins")
logger.report_confusion_matrix("cm", "val", matrix=np.eye(2), iteration=3, xlabels=["a", "b"])
logger.report_scatter2d("pts", "val", scatter=[(0, 1), (1, 2)], iteration=3, mode="markers")
logger.report_line_plot("lines", [Logger.SeriesInfo("a", [[0, 1], [1, 3]])], "x", "y")
logger.report_surface("surf", "val", np.ones((2, 2)))
logger.report_histogram("bad", "val")  # a missing argument: logged, not raised
logger.set_default_upload_destination("s3://elsewhere")  # images go with the task
assert logger.get_default_upload_destination() == task.output_uri
assert task.get_last_iteration() == 9999
logger.report_table("preds", "val", iteration=3, table_plot=pd.DataFrame({"y": [1, 2]}))
logger.report_image("sample", "val", iteration=3, matrix=np.zeros((8, 8), dtype=np.uint8))
logger.report_plotly("curve", "val", figure={"data": [{"y": [1, 2, 3]}]})
assert logger.report_matplotlib_figure("bad", "call", figure=object()) is None  # never raises
assert task.get_output_destination() == task.output_uri
assert logger.flush() is True
print(task.id, Task.get_project_id("examples"))
task.close()
assert Task.current_task() is None
"""


def test_a_clearml_script_runs_and_reads_back(daemon: DaemonProc, env: Env) -> None:
    out = run_py(env, f"import sys; sys.argv = ['s', {str(env.root)!r}]\n" + SCRIPT)
    task_id, project_id = out.stdout.split()[-2:]
    assert project_id == "examples"
    assert "report_matplotlib_figure failed" in out.stderr  # logged, not raised
    assert "report_histogram failed" in out.stderr
    assert "epoch done" in out.stdout and "quiet line" not in out.stdout
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
            "image": [arts["image: float - val"].type, arts["image: float - val"].get().size],
            "hist": arts["histogram: hist - val"].get(),
            "cm": arts["confusion matrix: cm - val"].get(),
            "lines": arts["line plot: lines"].get(),
            "last iteration": t.get_last_iteration(),
        }))
        """,
    )
    got = json.loads(check.stdout.splitlines()[-1])
    assert got["params"] == {  # text as ClearML shows it: str(value), JSON for lists
        "General/lr": "0.2",
        "General/optimizer/name": "adam",
        "General/optimizer/beta": "0.9",
        "General/extra": "7",
        "General/seed": "7",
        "Args/epochs": "3",
        "Args/amp": "False",
        "Args/sizes": "[1, 2]",
        "Model/depth": "4",
        "Instance/width": "8",
    }
    assert got["cast"]["General"]["lr"] == 0.2 and got["cast"]["Args"]["epochs"] == 3
    assert got["tags"] == ["a", "b"] and got["comment"] == "a comment"
    assert got["net"] == {"layers": [64, 64]} and got["file"] == "batch: 32\n"
    assert got["names"] == [
        "confusion matrix: cm - val",
        "console",
        "histogram: hist - val",
        "image: float - val",
        "image: sample - val",
        "line plot: lines",
        "plotly: curve - val",
        "scalars",
        "scatter2d: pts - val",
        "single values",
        "surface: surf - val",
        "table: preds - val",
    ]
    assert got["rows"] == 10_000 and got["last"] == [9999, 1.0 / 10_000]
    assert got["single"] == {"accuracy": 0.93}
    assert got["console"] == "epoch done\nquiet line\n"
    assert got["image"] == ["image", [6, 4]]  # floats in [0, 1]: a PNG image, 6 x 4
    assert got["hist"] == {"values": [1, 5, 2], "xaxis": "bins"}
    assert got["cm"] == {"matrix": [[1.0, 0.0], [0.0, 1.0]], "xlabels": ["a", "b"]}
    assert got["lines"]["series"] == [{"name": "a", "data": [[0, 1], [1, 3]]}]
    assert got["last iteration"] == 9999  # from the scalars' metadata, in another process
    ls = subprocess.run(
        [sys.executable, "-m", "artisync.cli", "ls", "examples", "clearml style"],
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "# param General/lr = 0.2" in ls.stdout and "# configuration net" in ls.stdout
    assert task_id in ls.stdout


def test_clearml_names_artisync_lacks_raise_not_implemented_on_the_class_and_instances(
    env: Env,
) -> None:
    from artisync import Task
    from artisync._clearml import NOT_HERE

    clearml_only = ["create", "clone", "enqueue", "get_projects", "set_credentials", "reset"]
    task = Task.init(project_name="surface", task_name="names")
    for owner in (Task, task):
        for name in clearml_only:
            with pytest.raises(NotImplementedError, match=f"Task.{name} is ClearML's"):
                getattr(owner, name)
        for name in ("no_such_thing", "__no_such_dunder__"):  # not ClearML's: hasattr works
            with pytest.raises(AttributeError):
                getattr(owner, name)
            assert not hasattr(owner, name)
    assert not [n for n in NOT_HERE if n in dir(Task)]  # nothing listed is implemented
    with pytest.raises(NotImplementedError, match="spool"):
        Task.set_offline(offline_mode=True)
    # called before Task.init in ClearML scripts: accepted, nothing to do here
    Task.add_requirements("torch", "2.3")
    Task.force_requirements_env_freeze(force=True, requirements_file="req.txt")
    Task.ignore_requirements("pywin32")
    Task.set_random_seed(None)
    Task.set_offline(offline_mode=False)
    assert Task.running_locally() is True and Task.is_offline() is False
    assert task.is_main_task() and task.running_locally()
    task.set_task_type("testing")
    task.close()


def test_parameters_and_status_calls_change_the_task_record(env: Env) -> None:
    from artisync import Task

    task = Task.init(project_name="surface", task_name="calls")
    task.set_parameters({"Args/a": 1, "General/b": [1, 2]})
    task.update_parameters({"Args/c": True}, d=None)
    assert task.get_parameters() == {
        "Args/a": "1",
        "Args/c": "True",
        "General/b": "[1, 2]",
        "General/d": "",
    }
    assert task.delete_parameter("Args/a") and not task.delete_parameter("Args/zz")
    assert task.get_parameters_as_dict(cast=True)["Args"] == {"c": True}
    task.set_configuration_object("model", config_text="depth: 4\n")
    task.set_configuration_object("opt", config_dict={"lr": 0.1})
    assert task.get_configuration_objects() == {
        "model": "depth: 4\n",
        "opt": '{\n  "lr": 0.1\n}',
    }
    assert task.get_configuration_object_as_dict("opt") == {"lr": 0.1}
    task.mark_started()  # running already: nothing to do
    task.mark_stopped()
    assert task.status == "aborted"
    with pytest.raises(NotImplementedError, match="Task.init a new one"):
        task.mark_started()
    task.close()  # an aborted task stays aborted
    assert task.status == "aborted"


def test_scalars_are_stored_in_chunks_of_new_rows_and_read_back_whole(
    daemon: DaemonProc, env: Env
) -> None:
    made = run_py(
        env,
        """
        import time
        from artisync import Task
        t = Task.init(project_name="chunks", task_name="c")
        logger = t.get_logger()
        logger.set_flush_period(0.2)
        def stored(rows):  # by the logger's thread, as the loop goes on: no flush, no close
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                art = t.artifacts.get("scalars")
                if art is not None and art.metadata["rows"] == rows:
                    return
                time.sleep(0.05)
            raise AssertionError(f"{rows} rows not stored")
        for i in range(30_000):  # past CHUNK_ROWS (20,000): a chunk is due meanwhile
            logger.report_scalar("loss", "train", float(i), iteration=i)
        stored(30_000)
        for i in range(30_000, 30_010):
            logger.report_scalar("loss", "train", float(i), iteration=i)
        stored(30_010)  # a chunk of its own, after its flush period
        assert len(t.artifacts["scalars"].get()["value"]) == 30_010  # joined, in this process
        for i in range(5):
            logger.report_scalar("acc", "val", 0.5, iteration=i)
        t.close()
        print(t.id)
        """,
    )
    task_id = made.stdout.split()[-1]
    read = run_py(
        env,
        f"""
        import json
        from artisync import Task
        t = Task.get_task(task_id={task_id!r})
        versions = t.get_artifact_versions("scalars")
        own = [json.load(open(v.get_local_copy())) for v in versions]
        whole = t.artifacts["scalars"].get()
        print(json.dumps({{
            "chunks": [v.metadata["chunk"] for v in versions],
            "own": [len(cols["value"]) for cols in own],
            "rows": [v.metadata["rows"] for v in versions],
            "first": len(versions[0].get()["value"]),
            "whole": [len(whole["value"]), whole["iteration"][:3], whole["title"][-1]],
            "ordered": whole["iteration"][:30_010] == list(range(30_010)),
        }}))
        """,
    )
    got = json.loads(read.stdout.splitlines()[-1])
    n = len(got["chunks"])
    assert n >= 3 and got["chunks"] == list(range(n))
    assert sum(got["own"]) == 30_015  # each version holds its new rows only
    assert got["rows"][-1] == 30_015 and got["first"] == got["rows"][0] == got["own"][0]
    assert got["whole"] == [30_015, [0, 1, 2], "acc"] and got["ordered"]
