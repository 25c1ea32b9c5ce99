"""ClearML's Task calls around the artifact ones: parameters, configuration, tags,
comment, status, remote-execution stubs, and a clear error for everything else.

Parameters and configuration objects are kept in the task record (``params``: section
-> name -> value; ``configuration``: name -> {"type", "value", "description"}), so
other processes, ``artisync ls`` and the view see them; each change is a new task
event, and connected objects are read once more at close (edits after connect count).
ClearML's names artisync lacks raise ``NotImplementedError`` (:data:`NOT_HERE`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artisync.protocol import ArtisyncError

from . import _logger

MAX_PARAMS_BYTES = 256 * 1024  # a task's parameters and configuration, as JSON
MAX_CONFIG_TEXT = 1024 * 1024  # a configuration file kept as text

# What to use instead of ClearML's Task methods and properties artisync does not implement
_HINTS = {
    "artisync has no agents or queues: run the script where it should run": """
        create clone enqueue dequeue get_num_enqueued_tasks create_function_task last_worker
        launch_multi_node wait_for_status get_executed_queue debug_simulate_remote_task
        set_base_docker get_base_docker set_packages set_repo set_script get_script
        get_requirements set_resource_monitor_iteration_timeout register_abort_callback
        mark_stop_request get_http_router request_external_endpoint wait_for_external_endpoint
        list_external_endpoints""",
    "store model files as artifacts: task.upload_artifact(name, path)": """
        get_models models update_output_model set_model_label_enumeration output_models_id
        connect_label_enumeration get_labels_enumeration get_model_config_dict labels_stats
        get_model_config_text set_model_config get_model_design update_model_desc
        set_input_model remove_input_models input_models_id get_num_of_classes
        get_label_num_description save_exec_model_design_file""",
    "read the Logger's artifacts: task.artifacts['scalars'], ['single values'], ['console']": """
        get_reported_scalars get_reported_plots get_reported_console_output metrics_manager
        get_reported_single_value get_reported_single_values get_last_scalar_metrics
        get_all_reported_scalars get_debug_samples""",
    "name a task at Task.init(project_name=..., task_name=...)": """
        set_name rename set_project move_to_project set_parent parent""",
    "Task.init makes a task; it ends completed, failed or aborted; see `artisync prune`": """
        reset publish publish_on_completion set_archived get_archived delete delete_artifacts
        set_artifacts set_system_tags get_system_tags get_status_message update_task
        export_task import_task""",
    "task.connect(dict, name=...) or task.set_parameter('Section/name', value)": """
        set_user_properties get_user_properties delete_user_properties""",
    "iterations are recorded as they are reported": """
        set_initial_iteration get_initial_iteration""",
    "Task.get_task / Task.get_tasks, `artisync ls`, or `artisync ui` (a task's page is "
    "/p/<project>/t/<task_id>; its printed text is the 'console' artifact)": """
        get_output_log_web_page get_task_output_log_web_page get_projects get_all query_tasks
        get_by_name get_project_object reload""",
    "storage and its credentials are the daemon's settings (artisync.toml, ARTISYNC_*); "
    "while storage is unreachable, the spool keeps everything": """
        set_credentials setup_upload setup_aws_upload setup_gcp_upload setup_azure_upload
        import_offline_session get_offline_mode_folder cache_dir""",
}
NOT_HERE: dict[str, str] = {n: hint for hint, names in _HINTS.items() for n in names.split()}


def missing(owner: str, name: str) -> Exception:
    """For ``owner.name``: NotImplementedError if ClearML's Task has it, else AttributeError."""
    if name not in NOT_HERE:
        return AttributeError(f"{owner} has no attribute {name!r}")
    hint = NOT_HERE[name]
    return NotImplementedError(f"Task.{name} is ClearML's; artisync does not implement it: {hint}")


def _ignored(*args: Any, **kwargs: Any) -> None:
    """Accepted and ignored."""


class ClearMLSurface:
    """Mixed into Task: the calls ClearML scripts make around their artifacts."""

    _record: dict[str, Any]
    _connected: list[tuple[str, Any]]

    if TYPE_CHECKING:

        def _set_status(self, status: str, event: str, **fields: Any) -> None: ...
        def _update(self, **fields: Any) -> None: ...

    # -- parameters ----------------------------------------------------------------------------
    def connect(self, mutable: Any, name: str | None = None, **kwargs: Any) -> Any:
        """Record ``mutable``'s values and return it, as ClearML does: an ``ArgumentParser``
        under ``Args`` (its values from this command line, else its defaults); a dict,
        nested keys as ``a/b``, a class's or an object's public attributes (a Namespace is
        one) under ``name`` (default ``General``), added to what that section holds."""
        parser = isinstance(mutable, argparse.ArgumentParser)
        connected = ("Args", _argparse_values(mutable)) if parser else (name or "General", mutable)
        self._connected.append(connected)
        self._merge([(connected[0], _values_of(connected[1]))])
        return mutable

    def connect_configuration(
        self, configuration: Any, name: str | None = None, description: str | None = None
    ) -> Any:
        """A dict is kept as it is; a path, as the file's text. Returns ``configuration``."""
        if isinstance(configuration, Mapping):
            entry = {"type": "dict", "value": _jsonable(dict(configuration))}
        elif isinstance(configuration, str | os.PathLike) and os.path.isfile(configuration):
            text = Path(configuration).read_text(errors="replace")
            entry = {"type": "text", "value": text, "path": os.fspath(configuration)}
        else:
            raise TypeError("connect_configuration takes a dict or the path of a file")
        self._set_configuration(name or "General", entry, description)
        return configuration

    def set_configuration_object(
        self,
        name: str,
        config_text: str | None = None,
        description: str | None = None,
        config_type: str | None = None,
        config_dict: Mapping[str, Any] | None = None,
    ) -> None:
        if config_dict is not None:
            entry = {"type": "dict", "value": _jsonable(dict(config_dict))}
        else:
            entry = {"type": "text", "value": str(config_text or "")}
        self._set_configuration(name, entry, description)

    def _set_configuration(self, key: str, entry: dict[str, Any], description: str | None) -> None:
        if entry["type"] == "text" and len(entry["value"]) > MAX_CONFIG_TEXT:
            raise ArtisyncError(f"configuration {key!r} is over 1 MiB of text")
        entry["description"] = description or ""
        self._update(configuration={**(self._record.get("configuration") or {}), key: entry})

    def get_configuration_object(self, name: str) -> str | None:
        value = (self._record.get("configuration") or {}).get(name, {}).get("value")
        return value if value is None or isinstance(value, str) else json.dumps(value, indent=2)

    def get_configuration_objects(self) -> dict[str, str]:
        names = self._record.get("configuration") or {}
        return {n: self.get_configuration_object(n) or "" for n in names}

    def get_configuration_object_as_dict(self, name: str) -> dict[str, Any] | None:
        value = (self._record.get("configuration") or {}).get(name, {}).get("value")
        return value if value is None or isinstance(value, dict) else json.loads(value)

    def get_parameters(
        self, backwards_compatibility: bool = True, cast: bool = False
    ) -> dict[str, Any]:
        """``{"Section/name": value}``: text as ClearML shows it (``str(value)``; JSON for
        lists and dicts; ``""`` for None), or as set with ``cast=True``."""
        return {
            f"{section}/{key}": (value if cast else _text(value))
            for section, values in self._params().items()
            for key, value in values.items()
        }

    def get_parameters_as_dict(self, cast: bool = False) -> dict[str, Any]:
        return {
            section: {k: (v if cast else _text(v)) for k, v in values.items()}
            for section, values in self._params().items()
        }

    def get_parameter(self, name: str, default: Any = None, cast: bool = False) -> Any:
        return self.get_parameters(cast=cast).get(_full(name), default)

    def set_parameter(
        self, name: str, value: Any, description: str | None = None, value_type: Any = None
    ) -> None:
        section, _, key = _full(name).partition("/")
        self._merge([(section, {key: value})])

    def set_parameters(self, *args: Any, **kwargs: Any) -> None:
        """``set_parameters({"Section/name": value, ...})`` or keywords: the task's whole
        set of parameters from now on, as ClearML's."""
        self._update(params=_checked(_sections(args, kwargs)))

    def update_parameters(self, *args: Any, **kwargs: Any) -> None:
        """As :meth:`set_parameters`, added to the parameters the task has."""
        self._merge(_sections(args, kwargs).items())

    def set_parameters_as_dict(self, dictionary: dict[str, Any]) -> None:
        """``{"Section": {"name": value}}``: the whole set, as ClearML's."""
        params = {
            section: {k: _jsonable(v) for k, v in _flatten(values).items()}
            for section, values in dictionary.items()
            if isinstance(values, Mapping)
        }
        self._update(params=_checked(params))

    def delete_parameter(self, name: str, force: bool = False) -> bool:
        """Remove ``Section/name``; False if the task has no such parameter."""
        section, _, key = _full(name).partition("/")
        params = self._params()
        if params.get(section, {}).pop(key, _NONE) is _NONE:
            return False
        self._update(params={s: v for s, v in params.items() if v})
        return True

    def _params(self) -> dict[str, dict[str, Any]]:
        return {s: dict(v) for s, v in (self._record.get("params") or {}).items()}

    def _merge(self, sections: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        params = self._params()
        for section, values in sections:
            params.setdefault(section, {}).update({k: _jsonable(v) for k, v in values.items()})
        if params != (self._record.get("params") or {}):
            self._update(params=_checked(params))

    def _reconnect(self) -> None:
        """At close: the connected objects' values now (a script may have edited them)."""
        self._merge((section, _values_of(obj)) for section, obj in self._connected)

    # -- tags, comment, status -------------------------------------------------------------------
    def add_tags(self, tags: str | list[str]) -> None:
        new = [tags] if isinstance(tags, str) else list(tags)
        have = list(self._record.get("tags") or [])
        self._update(tags=have + [t for t in new if t not in have])

    def set_tags(self, tags: list[str]) -> None:
        self._update(tags=list(tags))

    def get_tags(self) -> list[str]:
        return list(self._record.get("tags") or [])

    @property
    def comment(self) -> str:
        return str(self._record.get("comment") or "")

    def set_comment(self, comment: str) -> None:
        self._update(comment=str(comment))

    def get_comment(self) -> str:
        return self.comment

    def mark_started(self, force: bool = False) -> None:
        """A task is started by ``Task.init``: nothing to do while it runs."""
        if (status := self._record["status"]) != "in_progress":
            raise NotImplementedError(f"this task is {status}: Task.init a new one")

    started = mark_started

    def mark_stopped(self, force: bool = False, *args: Any, **kwargs: Any) -> None:
        """Status ``aborted``, as ClearML's UI calls a stopped task."""
        self._set_status("aborted", "closed")

    stopped = mark_stopped

    def completed(self, ignore_errors: bool = True) -> None:
        self._set_status("completed", "closed")

    set_task_type = _ignored  # as Task.init's task_type

    def set_progress(self, progress: int) -> None:
        """Kept in this process only (a task event a step would flood the spool)."""
        self.__dict__["_progress"] = int(progress)

    def get_progress(self) -> int | None:
        return self.__dict__.get("_progress")

    # -- the rest of the task surface -----------------------------------------------------------
    def get_output_destination(self, extra_path: str | None = None, **kwargs: Any) -> str:
        dest = str(self._record["dest"])
        return dest if not extra_path else f"{dest}/{extra_path}"

    @property
    def storage_uri(self) -> str:
        return str(self._record["dest"])

    def execute_remotely(
        self, queue_name: str | None = None, clone: bool = False, exit_process: bool = True
    ) -> None:
        """As ClearML does with no agent involved: nothing; the script goes on here."""
        return None

    def get_logger(self) -> _logger.Logger:
        return _logger.Logger.for_task(self)

    @property
    def logger(self) -> _logger.Logger:
        return self.get_logger()

    def get_last_iteration(self) -> int:
        """The highest iteration reported to this task's Logger (0 if none)."""
        return _logger.Logger.last_iteration_of(self)

    def is_current_task(self) -> bool:
        return self is _logger.current_task()

    is_main_task = is_current_task

    @staticmethod
    def running_locally() -> bool:
        """Always True: artisync runs no agents."""
        return True

    @classmethod
    def get_project_id(cls, project_name: str, search_hidden: bool = True) -> str:
        """artisync has no project ids: a project is its name."""
        return project_name

    # ClearML calls these before Task.init to shape a remote run (its requirements, its
    # code) or its seeding; artisync runs nothing remotely and seeds nothing
    add_requirements = ignore_requirements = force_requirements_env_freeze = classmethod(_ignored)
    force_store_standalone_script = set_random_seed = classmethod(_ignored)

    get_random_seed = _ignored  # None: no seed was set

    @classmethod
    def set_offline(cls, offline_mode: bool = False) -> None:
        if offline_mode:
            raise NotImplementedError(f"Task.set_offline(True): {NOT_HERE['set_credentials']}")

    @classmethod
    def is_offline(cls) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        raise missing(f"{type(self).__name__!r} object", name)


_NONE = object()
_ALLOWED = (str, int, float, list, tuple, dict, type(None), Enum)  # ClearML's, for objects


def _values_of(obj: Any) -> dict[str, Any]:
    """As ClearML reads a connected object: a dict's items; a class's public attributes
    (its bases' too); an instance's own public attributes (a Namespace's arguments)."""
    if isinstance(obj, Mapping):
        return _flatten(obj)
    scopes = [vars(c) for c in reversed(obj.__mro__)] if isinstance(obj, type) else [obj.__dict__]
    public = [(k, v) for sc in scopes for k, v in sc.items() if not str(k).startswith("_")]
    # the values JSON holds as they are (_jsonable turns the others into new strings)
    return _flatten({k: v for k, v in public if isinstance(v, _ALLOWED) and _jsonable(v) is v})


def _argparse_values(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The arguments of this command line (else the defaults), as ClearML records them:
    a list or other object as ``str(value)``, None as ``""``."""
    values = {a.dest: a.default for a in parser._actions if a.default is not argparse.SUPPRESS}
    values.pop(argparse.SUPPRESS, None)  # sub-commands' action, say
    quiet = parser._print_message  # -h or a bad argument: the script's own parse says so
    parser._print_message = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        values.update(vars(parser.parse_known_args(sys.argv[1:])[0]))
    except (SystemExit, argparse.ArgumentError):
        pass
    finally:
        parser._print_message = quiet  # type: ignore[method-assign]
    basic = (str, int, float, bool)
    return {k: "" if v is None else v if type(v) in basic else str(v) for k, v in values.items()}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _sections(args: Iterable[Any], kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    given = {k: v for arg in args for k, v in dict(arg).items()}
    given.update({k: v for k, v in kwargs.items() if not k.startswith("__")})  # ClearML's own
    params: dict[str, dict[str, Any]] = {}
    for name, value in given.items():
        section, _, key = _full(name).partition("/")
        params.setdefault(section, {})[key] = _jsonable(value)
    return params


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _text(v: Any) -> str:
    """As ClearML stores a parameter: ``""`` for None, JSON for lists and dicts, else str()."""
    return "" if v is None else json.dumps(v) if isinstance(v, list | tuple | dict) else str(v)


def _full(name: str) -> str:
    return name if "/" in name else f"General/{name}"


def _checked(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if len(json.dumps(params)) > MAX_PARAMS_BYTES:
        raise ArtisyncError("a task's parameters are limited to 256 KiB (as JSON)")
    return params
