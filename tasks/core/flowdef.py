"""The shape of every batchflows flow: its parameters declared once, everything else derived.

A flow declares its parameters as one pydantic model (shared knobs come from ``tasks.core.params`` as
``Annotated`` aliases and small mixin groups), and its body takes that model::

    class BatchMapParams(RunParams, ItemParams, ...):
        source: Items
        handler: Handler
        chunk_size: ChunkSize = SETTING

    @batchflow("batch-map", BatchMapParams, positional=("source", "handler"))
    def batch_map_flow(p: BatchMapParams) -> RunSummary:
        '''Run a handler over every item: chunked, bounded, retried, resumable.'''

    batch_map = python_entry(batch_map_flow, objects={"source": SourceLike, "handler": HandlerLike})

From that one declaration come:

* **the Prefect flow**: a flat signature generated from the model (so ``--param item_concurrency=32``
  works from the CLI and prefect.yaml stays readable), whose parameter schema (the UI form) carries
  every type, bound and default; the description of each parameter is written into the docstring's
  ``Args:`` section, where Prefect 3.8 reads descriptions from (it drops ``Field(description=...)``).
* **validation**, the same for every entry point: the model, at the start of the run (Prefect's own
  validation is off, so a deployment run from the UI or the CLI gets the same message as Python):
  a ConfigError naming each bad parameter, the rule and the value.
* **settings as defaults**: a field whose alias carries :class:`FromSetting` and that is not given takes
  the setting's value (``BATCHFLOWS_*``) when the run starts.
* **the final state**: the body returns its summary; the flow ends Completed or Failed with the counts as
  the state message. A Completed state's data is the summary; a Failed state's data is :class:`RunFailed`
  with the summary attached (Prefect raises a failed state's data when the flow object is called, and can
  only raise an exception), so ``batch_map_flow(...)`` raises RunFailed like ``batch_map(...)`` does.
* **the Python entry point**: the same parameters (in-process objects such as generators and callables
  where declared), validated before any flow run exists, returning the summary, or raising
  :class:`RunFailed` (with the summary) when the run ends Failed unless ``raise_on_failure=False``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from tasks.core.errors import BatchflowsError, ConfigError, RunFailed, SettingError

P = TypeVar("P", bound="FlowParams")
S = TypeVar("S")
SETTING: Any = None  # the default of a parameter whose value comes from a setting when not given


@dataclass(frozen=True)
class FromSetting:
    """``Annotated`` metadata: when the parameter is not given, its value is this setting's."""

    settings: type[BaseSettings]
    field: str

    @property
    def env(self) -> str:
        prefix = self.settings.model_config.get("env_prefix", "")
        return f"{prefix}{self.field}".upper()

    def value(self) -> Any:
        return getattr(self.settings(), self.field)

    def describe(self) -> str:
        default = self.settings.model_fields[self.field].default
        return f"Default (null): the {self.env} setting ({default} when unset)."


class FlowParams(BaseModel):
    """Base of every flow's parameter model: strict names, settings filled in, one error format."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _settings_are_defaults(cls, data: Any) -> Any:
        """A bad ``BATCHFLOWS_*`` value raises the settings' SettingError, which names the variable (it is not a
        parameter); :meth:`parse` and :func:`describe_validation_error` show it as that."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for name, setting in setting_fields(cls).items():
            if filled.get(name) is None:
                filled[name] = setting.value()
        return filled

    @classmethod
    def parse(cls: type[P], values: Mapping[str, Any]) -> P:
        """Validate, turning pydantic's errors into one ConfigError that names every bad parameter."""
        try:
            return cls(**values)
        except ValidationError as exc:
            from_settings = {n: s for n, s in setting_fields(cls).items() if values.get(n) is None}
            text = describe_validation_error(exc, settings=from_settings)
            by_settings = all(_is_setting_error(err, from_settings) for err in exc.errors())
            raise (SettingError if by_settings else ConfigError)(text) from None


def _is_setting_error(err: Mapping[str, Any], from_settings: Mapping[str, FromSetting]) -> bool:
    """The error is a setting's, not a parameter's: a ``BATCHFLOWS_*`` variable read for a default was refused
    (the settings' SettingError), or a parameter not given failed with the value its setting gave it."""
    if isinstance((err.get("ctx") or {}).get("error"), SettingError):
        return True
    loc = err.get("loc") or ()
    return bool(loc) and str(loc[0]) in from_settings


@functools.cache
def setting_fields(model: type[BaseModel]) -> dict[str, FromSetting]:
    return {name: meta for name, field in model.model_fields.items() for meta in field.metadata
            if isinstance(meta, FromSetting)}


def describe_validation_error(exc: ValidationError, *, settings: Mapping[str, FromSetting] | None = None) -> str:
    """``invalid parameters: chunk_size: Input should be greater than or equal to 1 (got 0)``.

    The values shown are redacted (a URL may hold a password); the messages of batchflows' own validators
    (``value_error``) are shown as they are: they never contain a value they were not asked to show.
    """
    from tasks.core.redact import redact_text

    parts: list[str] = []
    bad_settings: list[str] = []
    for err in exc.errors():
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, SettingError):  # a BATCHFLOWS_* variable read for a default: not a parameter
            bad_settings.append(str(error))
            continue
        loc = [str(p) for p in err["loc"]]
        value = err.get("input")
        shown = "" if isinstance(value, dict) or not loc else f" (got {redact_text(repr(value))})"
        source = f" from {settings[loc[0]].env}" if settings and loc and loc[0] in settings else ""
        message = str(err["msg"])
        message = message.removeprefix("Value error, ") if err["type"] == "value_error" else redact_text(message)
        parts.append(f"{'.'.join(loc)}: {message}{shown}{source}" if loc else message)
    return "; ".join([*dict.fromkeys(bad_settings), *(["invalid parameters: " + "; ".join(parts)] if parts else [])])


# --------------------------------------------------------------------------- the flow


def _description(field: FieldInfo) -> str:
    text = (field.description or "").strip()
    for meta in field.metadata:
        if isinstance(meta, FromSetting):
            text = f"{text} {meta.describe()}".strip()
    return " ".join(text.split())


def _order(model: type[FlowParams], positional: Sequence[str]) -> list[str]:
    """Positional parameters, then the model's own fields, then the shared groups' (the UI form order)."""
    own = [n for n in model.__annotations__ if n in model.model_fields]
    rest = [n for n in model.model_fields if n not in own]
    return [*positional, *[n for n in [*own, *rest] if n not in positional]]


def flat_signature(model: type[FlowParams], positional: Sequence[str], returns: Any,
                   widen: Mapping[str, Any] | None = None) -> inspect.Signature:
    """The flat function signature of a parameter model (one parameter per field, with its bounds).

    A parameter whose value comes from a setting when not given is ``T | None`` there, default None: its
    schema (``anyOf: [T, null]``, default null) accepts the null a deployment run or the UI form sends for
    "use the setting"; the model itself keeps ``T`` and fills the setting in.
    """
    params = []
    from_setting = setting_fields(model)
    for name in _order(model, positional):
        field = model.model_fields[name]
        annotation = (widen or {}).get(name) or (
            typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)  # type: ignore[misc]
        if name in from_setting and name not in (widen or {}):
            annotation = annotation | None
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name in positional else inspect.Parameter.KEYWORD_ONLY
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        params.append(inspect.Parameter(name, kind, default=default, annotation=annotation))
    return inspect.Signature(params, return_annotation=returns)


def _docstring(body: Callable[..., Any], model: type[FlowParams], positional: Sequence[str]) -> str:
    summary = inspect.cleandoc(body.__doc__ or model.__doc__ or "")
    lines = [f"    {name}: {_description(model.model_fields[name]) or name}" for name in _order(model, positional)]
    return f"{summary}\n\nArgs:\n" + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FlowSpec(Generic[P]):
    """What :func:`batchflow` knows about a flow: its name, parameter model and body."""

    name: str
    model: type[P]
    body: Callable[[P], Any]
    positional: tuple[str, ...]
    summary: type[Any]

    @property
    def signature(self) -> inspect.Signature:
        return flat_signature(self.model, self.positional, self.summary)

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        try:
            bound = self.signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            msg = f"{self.name}: {exc}; the parameters are {list(self.signature.parameters)}"
            raise ConfigError(msg) from None
        return dict(bound.arguments)

    def run(self, values: Mapping[str, Any]) -> Any:
        """Validate ``values`` and run the body (inside the current flow run)."""
        return self.run_parsed(self.model.parse(values))

    def run_parsed(self, params: P) -> Any:
        """Run the body with validated parameters; a ``run_timeout_s`` parameter is handed to the run's
        ChunkedRun (tasks.core.timeouts.run_timeout)."""
        from tasks.core.timeouts import run_timeout

        token = run_timeout.set(getattr(params, "run_timeout_s", None))
        try:
            return self.body(params)
        finally:
            run_timeout.reset(token)


def batchflow(name: str, model: type[P], *, positional: Sequence[str] = (), summary: type[Any] | None = None,
              **flow_options: Any) -> Callable[[Callable[[P], Any]], Any]:
    """Declare a flow from its parameter model and body (see the module docstring); returns the Prefect flow."""
    from prefect import flow

    from tasks.core import startup
    from tasks.core.notify import HOOKS

    def decorate(body: Callable[[P], Any]) -> Any:
        importable_module(body)
        returns = summary or inspect.signature(body, eval_str=True).return_annotation
        spec = FlowSpec(name=name, model=model, body=body, positional=tuple(positional), summary=returns)

        def run(*args: Any, **kwargs: Any) -> Any:
            params = spec.model.parse(spec.bind(args, kwargs))  # once: settings are read at the run's start
            retries = int(getattr(params, "flow_retries", 0) or 0)
            delay_s = _retry_delay_s() if retries else 0.0  # a bad BATCHFLOWS_FLOW_RETRY_DELAY_S: refused now
            for attempt in range(1, retries + 2):
                try:
                    summary = spec.run_parsed(params)
                except (ConfigError, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    if attempt > retries:
                        raise
                    _before_retry(name, attempt, retries, f"{type(exc).__name__}: {exc}", delay_s)
                    continue
                if getattr(summary, "state", "Completed") == "Completed" or attempt > retries:
                    return final_state(summary)
                _before_retry(name, attempt, retries, summary.message, delay_s)
            raise AssertionError("unreachable")  # pragma: no cover

        run.__name__ = body.__name__
        run.__qualname__ = body.__qualname__
        run.__module__ = body.__module__
        run.__doc__ = _docstring(body, model, positional)
        run.__signature__ = spec.signature  # type: ignore[attr-defined]
        options = {"log_prints": True, "persist_result": False, **HOOKS, **flow_options}
        prefect_flow = flow(name=name, validate_parameters=False, **options)(run)
        prefect_flow.spec = spec
        return startup.apply(prefect_flow)

    return decorate


def importable_module(obj: Any) -> None:
    """Name a flow module loaded from its file by its package path, so other processes can import it.

    A deployment's entrypoint ``flows/batch_map.py:batch_map_flow`` makes Prefect load that file as module
    ``batch_map``, a name no other process can import: Dask's scheduler and workers unpickle the chunk tasks
    (which carry the flow, its parameter model and its body by reference) and fail with ``No module named
    'batch_map'``. The module is registered as ``flows.batch_map`` (importable wherever the project is on
    the path) and what it has defined so far takes that name.
    """
    import sys

    name = getattr(obj, "__module__", None)
    module = sys.modules.get(name or "")
    if module is None or not name or "." in name or not getattr(module, "__file__", None):
        return
    path = Path(module.__file__).resolve()
    parts, parent = [path.stem], path.parent
    while (parent / "__init__.py").is_file():
        parts.insert(0, parent.name)
        parent = parent.parent
    if len(parts) == 1 or sys.modules.setdefault(".".join(parts), module) is not module:
        return
    canonical = ".".join(parts)
    for value in [*vars(module).values(), obj]:
        if getattr(value, "__module__", None) == name:
            try:
                value.__module__ = canonical
            except (AttributeError, TypeError):
                continue
    module.__name__ = canonical


def _retry_delay_s() -> float:
    from tasks.core.settings import EngineSettings

    return EngineSettings().flow_retry_delay_s


def _before_retry(flow: str, attempt: int, retries: int, reason: str, delay_s: float) -> None:
    """Log why attempt ``attempt`` is followed by another (flow_retries), then wait ``delay_s`` x the attempt."""
    import time

    from prefect.logging import get_run_logger

    from tasks.core.redact import redact_text

    delay = delay_s * attempt
    get_run_logger().warning(
        "%s attempt %d of %d ended without finishing (%s); running it again in %.0f s: it resumes from its "
        "records, only what did not finish runs", flow, attempt, retries + 1, redact_text(reason)[:500], delay)
    time.sleep(delay)


def final_state(summary: Any) -> Any:
    """The flow's final state: Completed or Failed with a message stating the counts.

    A Completed state's data is the summary. A Failed state's data is ``RunFailed(summary)``: calling the flow
    object raises a failed state's data (prefect.states.get_state_exception), which must be an exception.
    """
    from prefect.states import Completed, Failed

    if getattr(summary, "state", "Completed") == "Completed":
        return Completed(message=getattr(summary, "message", None), data=summary)
    return Failed(message=summary.message, data=RunFailed(summary))


def summary_from_state(state: Any) -> Any:
    """The summary of a finished flow run state; re-raise the error of a run that ended without one."""
    if not state.is_final():  # Prefect holds no result for it (UnfinishedRun)
        msg = (f"flow run ended {state.name}: it was cancelled through Prefect (UI or `prefect flow-run cancel`) while "
               "it ran in this Python process, which Prefect cannot stop (a worker or `serve` process can). Rerun "
               "with the same run_key: its finished chunks are kept, the rest runs, and the summary is returned")
        raise BatchflowsError(msg)
    result = state.result(raise_on_failure=False)
    if isinstance(result, RunFailed):
        result = result.summary
    if isinstance(result, BaseModel) and hasattr(result, "ok"):
        return result
    if isinstance(result, BaseException):
        raise result
    msg = f"flow run ended {state.name} without a summary: {state.message}"
    raise BatchflowsError(msg)


# --------------------------------------------------------------------------- the Python entry point


Prepare = Callable[[dict[str, Any], list[str]], None]


def keep_in_process(value: Any, handles: list[str]) -> Any:
    """A value Prefect may carry as a parameter: paths as str, other objects behind a ``mem:`` handle."""
    from tasks.core.loader import register_object

    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    handle = register_object(value)
    handles.append(handle)
    return handle


def _is_one_shot(value: Any) -> bool:
    """A generator, iterator, async generator or async iterator: its items can be read once only."""
    return isinstance(value, Iterator | AsyncIterator)


def _refuse_retrying_one_shot(flow: str, names: Sequence[str], flow_retries: int) -> None:
    """flow_retries runs the body again over the same parameters; a one-shot iterator would then give only what
    the first attempt left unread (some of it read ahead into chunks), so the retry cannot resume correctly."""
    if not names or not flow_retries:
        return
    what = " and ".join(repr(n) for n in names)
    msg = (f"{flow}: flow_retries={flow_retries} cannot be used with a generator or iterator as {what}: it can be "
           "read only once, so a retry would see only what the first attempt left unread. Pass a list, a file, a "
           "function returning the items or 'pkg.mod:fn' (read again from the start by each attempt), or leave "
           "flow_retries at 0 and rerun with the same run_key and a fresh iterator to resume")
    raise ConfigError(msg)


def python_entry(prefect_flow: Any, *, objects: Mapping[str, Any] | None = None, prepare: Prepare | None = None,
                 types: Mapping[str, Any] | None = None, doc: str | None = None) -> Callable[..., Any]:
    """The Python face of a flow (see the module docstring).

    ``objects`` maps parameters that accept in-process objects (generators, callables, paths) to their
    Python type; ``prepare(values, handles)`` may convert or move more values (credentials into the
    process, paths to str), and ``types`` names the Python types it accepts for them.
    """
    from tasks.core.loader import is_handle, release_object
    from tasks.core.progress import api_errors_explained
    from tasks.core.results import collect_rows, prepare_collect

    spec: FlowSpec[Any] = prefect_flow.spec
    objects = dict(objects or {})
    base = flat_signature(spec.model, spec.positional, spec.summary, widen={**(types or {}), **objects})
    collects = bool({"output", "output_dir"} & set(spec.model.model_fields))  # flows that write part files
    extra = [inspect.Parameter("raise_on_failure", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=bool)]
    if collects:
        extra.append(inspect.Parameter("collect", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool))
    signature = base.replace(parameters=[*base.parameters.values(), *extra])

    def entry(*args: Any, raise_on_failure: bool = True, collect: bool = False, **kwargs: Any) -> Any:
        if collect and not collects:
            msg = f"{spec.name} writes no part files, so collect=True has nothing to collect"
            raise ConfigError(msg)
        values = spec.bind(args, kwargs)
        handles: list[str] = []
        if collect:
            prepare_collect(spec.name, values, objects, has_output="output" in spec.model.model_fields)
        one_shot = [name for name in objects if _is_one_shot(values.get(name))]
        try:
            for name in objects:
                if name in values:
                    values[name] = keep_in_process(values[name], handles)
            if prepare is not None:
                prepare(values, handles)
            params = spec.model.parse(values)  # bad parameters: a ConfigError before any flow run exists
            _refuse_retrying_one_shot(spec.name, one_shot, int(getattr(params, "flow_retries", 0) or 0))
            with api_errors_explained(spec.name, values.get("run_key")):
                state = prefect_flow(**values, return_state=True)
            summary = summary_from_state(state)
        finally:
            for handle in handles:
                if is_handle(handle):
                    release_object(handle)
        if collect:
            collect_rows(summary)
        if raise_on_failure and not summary.ok:
            raise RunFailed(summary)
        return summary

    entry.__name__ = spec.name.replace("-", "_")
    entry.__qualname__ = entry.__name__
    entry.__module__ = spec.body.__module__
    entry.__doc__ = doc or (
        f"Run the {spec.name} flow from Python and return its summary.\n\nParameters are those of the flow "
        f"(see its Args); in-process objects are accepted for {sorted(objects) or 'none'}. Bad parameters raise "
        "ConfigError before any work; a run that ends Failed raises RunFailed (its ``summary`` attached) unless "
        "``raise_on_failure=False``, then the failed summary is returned."
        + (" ``collect=True`` (small runs) also reads the output rows into ``summary.collected``." if collects else ""))
    entry.__signature__ = signature  # type: ignore[attr-defined]
    entry.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()} | {
        "return": spec.summary}
    return entry


__all__ = [
    "SETTING",
    "FlowParams",
    "FlowSpec",
    "FromSetting",
    "RunFailed",
    "batchflow",
    "describe_validation_error",
    "final_state",
    "flat_signature",
    "keep_in_process",
    "python_entry",
    "summary_from_state",
]
