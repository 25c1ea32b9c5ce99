"""ClearML's artifact examples run with only the import changed.

The example (examples/artifacts_example.py) makes the same calls as ClearML's
reporting example; the two snippets below make the same calls, with the same
parameters, as ClearML's retrieval example and its "using artifacts" example.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

from tests.harness import REPO, DaemonProc, Env, run_py


def _run_example(env: Env) -> str:
    work = env.root / "examples"
    shutil.copytree(REPO / "examples", work)
    proc = subprocess.run(
        [sys.executable, "artifacts_example.py"],
        cwd=work,
        env=env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_reporting_then_retrieval_example(daemon: DaemonProc, env: Env) -> None:
    out = _run_example(env)
    assert "Numpy Eye" in out and "wildcard jpegs" in out
    retrieval = run_py(
        env,
        """
        import json, os, zipfile
        from artisync import Task
        t = Task.get_task(project_name='examples', task_name='artifacts example')
        eye = t.artifacts['Numpy Eye'].get()
        eye_path = t.artifacts['Numpy Eye'].get_local_copy()
        pil = t.artifacts['pillow_image'].get()
        pandas = t.artifacts['Pandas'].get()
        dictionary = t.artifacts['dictionary'].get()
        train = t.artifacts['train'].get()
        train_path = t.artifacts['train'].get_local_copy()
        jpegs = t.artifacts['wildcard jpegs'].get()
        folder = t.artifacts['local folder'].get()
        folder_zip = t.artifacts['local folder'].get_local_copy(extract_archive=False)
        local_file = t.artifacts['local file'].get()
        print(json.dumps({
            "eye": [eye.shape, float(eye.trace())],
            "eye_path": os.path.isfile(eye_path),
            "pil": [pil.size, pil.mode],
            "pandas": pandas.shape,
            "dictionary": sorted(dictionary),
            "train": list(train.index),
            "train_path": os.path.isfile(train_path),
            "jpegs": sorted(os.listdir(jpegs)),
            "folder": sorted(os.listdir(folder)),
            "zip": sorted(zipfile.ZipFile(folder_zip).namelist()),
            "local_file": os.path.getsize(local_file),
            "meta": t.artifacts['train'].metadata,
        }))
        """,
    )
    res = json.loads(retrieval.stdout)
    samples = sorted(p.name for p in (REPO / "examples" / "data_samples").iterdir())
    assert res["eye"] == [[100, 100], 100.0]
    assert res["eye_path"] and res["train_path"]
    assert res["pil"] == [[160, 120], "RGB"]
    assert res["pandas"] == [4, 3]
    assert res["dictionary"] == ["num_legs", "num_specimen_seen", "num_wings"]
    assert res["train"] == ["falcon", "dog", "spider", "fish", "ant"]  # the tracked change
    assert res["jpegs"] == sorted(s for s in samples if s.endswith(".jpg"))
    assert res["folder"] == samples
    assert res["zip"] == samples
    assert res["local_file"] == (REPO / "examples/data_samples/dancing.jpg").stat().st_size
    assert res["meta"] == {"counting": "legs", "max legs": 69}
    assert zipfile  # the zip was opened inside the snippet


def test_using_artifacts_example(env: Env) -> None:
    """Close one task, start another, read the first one's artifact: no daemon needed
    (read-your-writes from the same process)."""
    (env.root / "data_samples").mkdir()
    (env.root / "data_samples" / "sample.json").write_text('{"x": 1}')
    out = run_py(
        env,
        """
        from time import sleep
        from artisync import Task
        task1 = Task.init(project_name='examples', task_name='create artifact')
        task1.upload_artifact(name='data file', artifact_object='data_samples/sample.json')
        task1.close()
        task2 = Task.init(project_name='examples', task_name='use artifact from other task')
        preprocess_task = Task.get_task(project_name='examples', task_name='create artifact')
        local_json = preprocess_task.artifacts['data file'].get_local_copy()
        with open(local_json) as data_file:
            file_text = data_file.read()
        print(file_text)
        print(task2.id != task1.id, preprocess_task.id == task1.id)
        """,
    )
    assert out.stdout.split("\n")[:2] == ['{"x": 1}', "True True"]
