"""ClearML's Task calls around the artifact ones: parameters, configuration, tags,
comment, remote-execution stubs, and a clear error for everything else.

Parameters and configuration objects are kept in the task record (``params``:
section -> name -> value; ``configuration``: name -> {"type", "value",
"description"}), so ``Task.get_task`` in another process, ``artisync ls`` and
the artifacts view see them. Each change is a new task event in the spool, as a
status change is; values are recorded when connected or set, and once more when
the task closes (so edits a script makes to a connected dict are kept).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artisync.protocol import ArtisyncError

if TYPE_CHECKING:
    from ._logger import Logger

MAX_PARAMS_BYTES = 256 * 1024  # a task's parameters and configuration, as JSON
MAX_CONFIG_TEXT = 1024 * 1024  # a configuration file kept as text

# ClearML's Task methods that artisync does not implement, and what to use instead
NOT_HERE: dict[str, str] = {
    name: hint
    for names, hint in (
        (("create", "clone", "enqueue", "dequeue", "delete"), "run scripts directly"),
        (("wait_for_status", "get_by_name", "get_task_output_log_web_page"), "Task.get_task"),
        (
            (
                "get_models",
                "update_output_model",
                "set_model_label_enumeration",
                "connect_label_enumeration",
                "get_model_config_dict",
                "set_model_config",
            ),
            "upload_artifact for model files",
        ),
        (
            (
                "set_base_docker",
                "set_packages",
                "add_requirements",
                "force_requirements_env_freeze",
                "set_script",
                "get_script",
                "set_repo",
                "set_user_properties",
                "get_user_properties",
                "set_resource_monitor_iteration_timeout",
                "register_abort_callback",
                "set_initial_iteration",
                "get_initial_iteration",
                "set_progress",
                "get_progress",
                "publish",
                "archive",
                "set_archived",
                "get_reported_scalars",
                "get_reported_plots",
                "get_last_scalar_metrics",
                "get_reported_console_output",
                "export_task",
                "import_task",
                "set_offline",
                "is_offline",
                "move_to_project",
                "set_parent",
                "get_parent",
                "launch_multi_node",
                "get_http_router",
            ),
            "not part of artisync (artifacts, parameters and a small logger only)",
        ),
    )
    for name in names
}


class ClearMLSurface:
    """Mixed into Task: the calls ClearML scripts make around their artifacts."""

    _record: dict[str, Any]
    _connected: list[tuple[str, Any]]

    if TYPE_CHECKING:

        @property
        def output_uri(self) -> str: ...

        def _update(self, **fields: Any) -> None: ...

    # -- parameters ----------------------------------------------------------------------------
    def connect(self, mutable: Any, name: str | None = None) -> Any:
        """Record ``mutable``'s values under section ``name`` ("Args" for argparse,
        else "General"), and return ``mutable`` itself (a dict stays the same object)."""
        if isinstance(mutable, argparse.ArgumentParser):
            mutable = mutable.parse_known_args()[0]
        section = name or ("Args" if isinstance(mutable, argparse.Namespace) else "General")
        self._connected.append((section, mutable))
        self._set_section(section, _values_of(mutable))
        return mutable

    def connect_configuration(
        self, configuration: Any, name: str | None = None, description: str | None = None
    ) -> Any:
        """A dict is kept as it is; a path, as the file's text. Returns ``configuration``."""
        key = name or "General"
        if isinstance(configuration, Mapping):
            entry = {"type": "dict", "value": _jsonable(dict(configuration))}
        elif isinstance(configuration, str | os.PathLike) and os.path.isfile(configuration):
            text = Path(configuration).read_text(errors="replace")
            if len(text) > MAX_CONFIG_TEXT:
                raise ArtisyncError(f"configuration file {configuration} is over 1 MiB")
            entry = {"type": "text", "value": text, "path": os.fspath(configuration)}
        else:
            raise TypeError("connect_configuration takes a dict or the path of a file")
        entry["description"] = description or ""
        configs = dict(self._record.get("configuration") or {})
        configs[key] = entry
        self._update(configuration=configs)
        return configuration

    def get_configuration_object(self, name: str) -> str | None:
        entry = (self._record.get("configuration") or {}).get(name)
        if entry is None:
            return None
        value = entry["value"]
        return value if isinstance(value, str) else json.dumps(value, indent=2)

    def get_configuration_object_as_dict(self, name: str) -> dict[str, Any] | None:
        entry = (self._record.get("configuration") or {}).get(name)
        if entry is None:
            return None
        value = entry["value"]
        return dict(value) if isinstance(value, dict) else json.loads(value)

    def get_parameters(
        self, backwards_compatibility: bool = True, cast: bool = False
    ) -> dict[str, Any]:
        """``{"Section/name": value}``: strings, as ClearML gives them (``cast``: as set)."""
        return {
            f"{section}/{key}": (value if cast else _text(value))
            for section, values in (self._record.get("params") or {}).items()
            for key, value in values.items()
        }

    def get_parameters_as_dict(self, cast: bool = False) -> dict[str, Any]:
        return {
            section: {k: (v if cast else _text(v)) for k, v in values.items()}
            for section, values in (self._record.get("params") or {}).items()
        }

    def get_parameter(self, name: str, default: Any = None, cast: bool = False) -> Any:
        return self.get_parameters(cast=cast).get(_full(name), default)

    def set_parameter(
        self, name: str, value: Any, description: str | None = None, value_type: Any = None
    ) -> None:
        section, _, key = _full(name).partition("/")
        self._set_section(section, {key: value}, merge=True)

    def set_parameters(self, *args: Any, **kwargs: Any) -> None:
        """``set_parameters({"Section/name": value, ...})`` or keywords: the task's whole
        set of parameters from now on, as ClearML's."""
        given: dict[str, Any] = {}
        for arg in args:
            given.update(dict(arg))
        given.update(kwargs)
        params: dict[str, dict[str, Any]] = {}
        for name, value in given.items():
            section, _, key = _full(name).partition("/")
            params.setdefault(section, {})[key] = _jsonable(value)
        self._update(params=_checked(params))

    def set_parameters_as_dict(self, dictionary: dict[str, Any]) -> None:
        """``{"Section": {"name": value}}``: the whole set, as ClearML's."""
        params = {
            section: {k: _jsonable(v) for k, v in _flatten(values).items()}
            for section, values in dictionary.items()
            if isinstance(values, Mapping)
        }
        self._update(params=_checked(params))

    def _set_section(self, section: str, values: dict[str, Any], merge: bool = False) -> None:
        params = {s: dict(v) for s, v in (self._record.get("params") or {}).items()}
        current = params.get(section, {}) if merge else {}
        current.update({k: _jsonable(v) for k, v in values.items()})
        params[section] = current
        self._update(params=_checked(params))

    def _reconnect(self) -> None:
        """At close: the connected objects' values now (a script may have edited them)."""
        params = {s: dict(v) for s, v in (self._record.get("params") or {}).items()}
        for section, obj in self._connected:
            params.setdefault(section, {}).update(
                {k: _jsonable(v) for k, v in _values_of(obj).items()}
            )
        if params != (self._record.get("params") or {}):
            self._update(params=_checked(params))

    # -- the rest of the task surface -----------------------------------------------------------
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

    def get_output_destination(self, extra_path: str | None = None, **kwargs: Any) -> str:
        return self.output_uri if not extra_path else f"{self.output_uri}/{extra_path}"

    def execute_remotely(
        self, queue_name: str | None = None, clone: bool = False, exit_process: bool = True
    ) -> None:
        """As ClearML does with no agent involved: nothing; the script goes on here."""
        return None

    def get_logger(self) -> Logger:
        from ._logger import Logger

        return Logger.for_task(self)

    @classmethod
    def get_project_id(cls, project_name: str, search_hidden: bool = True) -> str:
        """artisync has no project ids: a project is its name."""
        return project_name

    def __getattr__(self, name: str) -> Any:
        hint = NOT_HERE.get(name)
        if hint is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise NotImplementedError(
            f"Task.{name} is ClearML's; artisync does not implement it: {hint}"
        )


def _values_of(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return _flatten(obj)
    if isinstance(obj, argparse.Namespace):
        return dict(vars(obj))
    # its public attributes, its class's too (as ClearML connects a config class)
    found = {k: getattr(obj, k, None) for k in dir(obj) if not k.startswith("_")}
    return {k: v for k, v in found.items() if not callable(v)}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value) if value is not None else ""


def _full(name: str) -> str:
    return name if "/" in name else f"General/{name}"


def _checked(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    if len(json.dumps(params)) > MAX_PARAMS_BYTES:
        raise ArtisyncError("a task's parameters are limited to 256 KiB (as JSON)")
    return params
