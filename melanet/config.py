"""Configuration as data: pydantic models loaded from YAML, overridable from the CLI.

Every stage has a config model (a subclass of :class:`StageConfig`). Unknown
keys are errors with a "did you mean" hint; ``--set a.b=value`` overrides any
key with a YAML-parsed value; the resolved config is written into the run.
A config file may start from another with a top-level ``base:`` key (a
packaged config name, or a path relative to the file): the file's keys are
merged into its base's, section by section (``image-cpu-small`` is
``fusion-cpu-small`` with the image-only run's changes).
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from melanet.errors import ConfigError, did_you_mean, unknown_choice
from melanet.io import read_yaml_mapping

PACKAGED_CONFIGS = Path(__file__).parent / "configs"

C = TypeVar("C", bound="StageConfig")


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def Choice(kind: str, choices: Iterable[str]) -> Any:
    """The one type for a config value picked by name (reader, executor, blend method, tracking backend...).

    ``Choice("reader", READERS)`` is ``Literal[*READERS]`` (so the JSON schema and type checkers see the
    names) whose check runs first and answers an unknown name as every registry does, with
    :func:`melanet.errors.unknown_choice` ("unknown reader 'pydicm' (did you mean 'pydicom'?); choose one
    of: ..."), when the config is loaded, before a stage creates a folder or reads a file. A registry that
    is a dict gives its keys.
    """
    names = tuple(str(c) for c in choices)

    def check(value: Any) -> Any:
        if not isinstance(value, str) or value not in names:
            raise ValueError(str(unknown_choice(kind, value, names)))
        return value

    return Annotated[Literal.__getitem__(names), BeforeValidator(check)]


def resolve_config_path(path: str | Path) -> Path:
    """Find a config file: a path as given, or the name of a packaged config (``fusion-cpu-small``)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    for name in (str(path), f"{path}.yaml", Path(str(path)).name):
        packaged = PACKAGED_CONFIGS / name
        if packaged.is_file():
            return packaged
    available = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(
        f"config file {str(path)!r} not found{did_you_mean(Path(str(path)).stem, available)}; "
        f"give a YAML path or one of the packaged configs: {', '.join(available)}"
    )


#: Top-level key of a config file naming the config it starts from (read by :func:`read_config_file`).
BASE_KEY = "base"


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, merged into its ``base:`` config's (recursively; a loop is an error)."""
    data = read_yaml_mapping(path, ConfigError, "fix the file")
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config {str(path)!r}: {BASE_KEY}: must name a config (a packaged name such as "
                          f"fusion-cpu-small, or a path relative to the file), got {base!r}")
    chain = (*_chain, path.resolve())
    beside = path.parent / base
    try:
        base_path = beside if beside.is_file() else resolve_config_path(base)
    except ConfigError as exc:
        raise ConfigError(f"config {str(path)!r}: {BASE_KEY}: {exc}") from None
    if base_path.resolve() in chain:
        loop = " -> ".join(p.name for p in (*chain, base_path))
        raise ConfigError(f"config {str(path)!r}: {BASE_KEY}: {base!r} leads back to itself ({loop}); "
                          f"remove one {BASE_KEY}: key")
    return deep_merge(read_config_file(base_path, chain), data)


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.epochs=3", "model.backbone=resnet18"]`` into a nested dict."""
    nested: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not key=value; write e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set both as a value and a section")
        node[parts[-1]] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _model_fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (sub)model that a validation error location points into."""
    cls: Any = model_cls
    for part in loc[:-1]:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        cls = field.annotation
    return list(getattr(cls, "model_fields", {}).keys())


def _origin(key: str, origins: dict[str, str], default: str) -> str:
    """Where the value at ``key`` came from: the ``--set`` override that set it (or a key inside it), else ``default``."""
    for set_key, origin in origins.items():
        if set_key == key or set_key.startswith(key + ".") or key.startswith(set_key + "."):
            return origin
    return default


def build_config(model_cls: type[C], data: dict[str, Any], source: str = "config",
                 origins: dict[str, str] | None = None) -> C:
    """Validate a dict into ``model_cls``, turning pydantic errors into one clear ConfigError.

    ``origins`` maps dotted keys given on the command line to how they were given (``--set a.b=1``), so an
    error in such a key names the override rather than the config file.
    """
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        lines, blamed = [], set()
        for err in exc.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            blamed.add(_origin(key, origins or {}, source))
            if err["type"] == "extra_forbidden":
                hint = did_you_mean(str(loc[-1]), _model_fields_at(model_cls, loc))
                lines.append(f"unknown key {key!r}{hint}")
            else:
                if str(err.get("ctx", {}).get("error", "")).startswith("unknown "):  # a Choice: its message says all
                    lines.append(f"{key}: {err['ctx']['error']}")
                    continue
                got = repr(err.get("input"))  # a whole section as the value says nothing: leave it out
                lines.append(f"{key}: {err['msg']}" + (f" (got {got})" if len(got) <= 80 else ""))
        raise ConfigError(f"invalid {', '.join(sorted(blamed))}: " + "; ".join(lines)) from None


def nest_dotted(values: Mapping[str, Any], what: str = "override") -> dict[str, Any]:
    """``{"model.use_meta": False, "train": {"epochs": 1}}`` -> nested dict; Python values kept as they are."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        parts = str(key).strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{what} {key!r}: {part!r} is set both as a value and a section")
        if isinstance(value, Mapping):
            value = nest_dotted(value, what)
            if isinstance(node.get(parts[-1]), dict):
                value = deep_merge(node[parts[-1]], value)
        node[parts[-1]] = value
    return nested


def load_config(
    model_cls: type[C],
    path: str | Path | Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    values: Mapping[str, Any] | None = None,
) -> C:
    """Load a stage config: model defaults < YAML file < ``extra`` (CLI flags) < ``values`` < ``--set``.

    ``path`` is a YAML file, a packaged config name, or a mapping (a config
    already in memory). ``extra`` keys may be dotted (``"train.folds"``); ``None``
    values are ignored so that CLI flags left unset do not override the file.
    ``values`` are overrides from Python (``{"model.use_meta": False}``), dotted
    or nested, taken as given (``None`` included).
    """
    data: dict[str, Any] = {}
    source = "config"
    if isinstance(path, Mapping):
        data, path, source = nest_dotted(path, "config key"), None, "config (dict)"
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        data = read_config_file(resolved)
    if extra:
        flags = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in extra.items() if v is not None]
        data = deep_merge(data, parse_overrides(flags))
    if values:
        data = deep_merge(data, nest_dotted(values))
    data = deep_merge(data, parse_overrides(overrides))
    origins = {item.split("=", 1)[0].strip(): f"--set {item}" for item in overrides or [] if "=" in item}
    return build_config(model_cls, data, source, origins)


def config_to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML text (paths as strings), for ``config.yaml`` in a run."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

