"""What every command shares: the Typer app, option declarations, config assembly, one-line errors."""

from __future__ import annotations

import errno
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError

from personaloom.errors import UserError
from personaloom.schemas.config import BuildConfig, LLMConfig  # pydantic only: --help stays light

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Synthetic life-long persona datasets.",
    context_settings={"show_default": True},
)
DEPRECATED: list[str] = []  # notes on old option spellings, printed once the command succeeded


def _deprecated(old: str, new: str) -> None:
    DEPRECATED.append(f"note: {old} is deprecated: use {new} (the old spelling still works)")


def _given(ctx: typer.Context, **values: Any) -> dict[str, Any]:
    """`values` by parameter name, None for each option left at its default: a config file's setting, or
    the model's own default (the one --help shows), then applies."""
    return {
        k: None if ctx.get_parameter_source(k).name in ("DEFAULT", "DEFAULT_MAP") else v
        for k, v in values.items()
    }


def _path_parser(option: str) -> Callable[[str | Path], Path]:
    """A path option's parser: an empty value is refused here, where it is still '' (Path('') is '.', so
    `--out ''` would otherwise build into the current folder)."""

    def parse(value: str | Path) -> Path:
        if isinstance(value, Path):  # a default
            return value
        if not value.strip():
            raise UserError(f"{option}: empty path: give a name (`.` for the current folder)")
        return Path(value)

    return parse


def path_option(option: str, help: str, *aliases: str, **kw: Any) -> Any:
    return typer.Option(option, *aliases, help=help, parser=_path_parser(option), metavar="PATH", **kw)


def flag(name: str, help: str, **kw: Any) -> Any:
    """A boolean option as `--x/--no-x`, its default in --help (no `<bool>` type column)."""
    return typer.Option(f"--{name}/--no-{name}", help=help, metavar="", **kw)


def _field_default(model: Any, field: str) -> Any:
    return model.model_fields[field].default


# The settings' own defaults, shown in --help; an option left at its default never overrides a config file
# (`_given`): these are the defaults BuildConfig and LLMConfig apply themselves.
B = partial(_field_default, BuildConfig)
L = partial(_field_default, LLMConfig)
NO_LIMIT = "no limit"

OutOpt = Annotated[Path, path_option("--out", "output root holding datasets")]
CacheOpt = Annotated[Path | None, path_option("--cache-dir", "LLM response cache", show_default="OUT/.cache")]
# Options that `build` and `serve` share: one declaration, one help text.
DatasetOpt = Annotated[str, typer.Option(help="dataset name")]
PersonasOpt = Annotated[int, typer.Option(help="number of personas")]
SessionsOpt = Annotated[int, typer.Option("--sessions", help="sessions per persona")]
# The old spelling of --sessions: still read (scripts, Makefiles), hidden, with a note once the command ends
OldScenesOpt = Annotated[int | None, typer.Option("--scenes-per-persona", hidden=True)]
ModelOpt = Annotated[
    str, typer.Option(help="model name at the endpoint (needed with --base-url; the embedded: its own)")
]
UserModelOpt = Annotated[
    str | None,
    typer.Option(help="model of the user simulator, same endpoint", show_default="--model"),
]
JudgeModelOpt = Annotated[
    str | None,
    typer.Option(help="model of the judges and checks, same endpoint", show_default="--model"),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        help="OpenAI-compatible URL; give --model with it",
        show_default="$OPENAI_BASE_URL, else the embedded model",
    ),
]
ConcurrencyOpt = Annotated[int, typer.Option(help="LLM calls in flight")]
ConfigOpt = Annotated[Path | None, path_option("--config", "JSON or TOML file of build settings")]
LocalesOpt = Annotated[
    str | None,
    typer.Option(help="comma list of locales to sample, e.g. en_US,de_DE", show_default="all"),
]
LanguagesOpt = Annotated[
    str | None,
    typer.Option(
        help="comma list of ISO 639-1 codes: only personas writing in these, e.g. en,zh", show_default="all"
    ),
]
SeedsOpt = Annotated[
    Path | None, path_option("--seeds", "seed tables folder", show_default="the shipped seeds/")
]
GrowOpt = Annotated[
    int | None,
    typer.Option(help="add N personas past the latest version (its settings; only the new ones are built)"),
]
OUT_DEFAULT = Path("output")


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _validation_line(e: ValidationError, source: str | None) -> str:
    """`--personas: ...` for an option, `FILE: llm.rpm: ...` for a config file; no pydantic prefixes."""
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    msg = err["msg"].removeprefix("Value error, ")
    if source is None:
        field = where.split(".")[-1]
        return f"--{OPTION_OF.get(field, field).replace('_', '-')}: {msg}"
    return f"{source}: {where}: {msg}"


OPTION_OF = {"ks": "k", "scenes_per_persona": "sessions"}  # config fields whose option has another name


# Prefect's log lines that only repeat, with a traceback, what main() says in one line.
_REPEATS = re.compile(
    r"Crash detected!|in state Crashed\(|UserError|BudgetExceeded|EnvironmentFailure|LLMError|No space left"
)
_INTERRUPTS = ("KeyboardInterrupt", "CancelledError", "TerminationSignal")


def _said_by_main(exc: BaseException | None) -> bool:
    """Whether main() turns `exc` into its own one line: our errors, a full disk, an interruption."""
    if exc is None:
        return False
    return (
        isinstance(exc, UserError | _llm_error())
        or type(exc).__name__ in _INTERRUPTS
        or bool(_full_disk(exc))
    )


def _quiet_prefect_tracebacks() -> None:
    """Our own errors, a full disk and an interruption already get one line from main(); Prefect would log
    them again (the engine's "Crash detected!" and "Finished in state Crashed" for an interruption) with a
    traceback. Idempotent."""
    import logging

    def one_line(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith("prefect"):
            return True
        if _said_by_main(record.exc_info[1] if record.exc_info else None):
            return False
        # the engine logs a crash inside its `except BaseException` (no exc_info on the record)
        return not (_REPEATS.search(str(record.msg)) or _said_by_main(sys.exc_info()[1]) or SIGNALLED)

    for handler in logging.getLogger().handlers + logging.getLogger("prefect").handlers:  # console: root
        if not any(getattr(f, "__name__", "") == "one_line" for f in handler.filters):
            handler.addFilter(one_line)


def _prefect_env(*, start_early: bool = False) -> Any:
    """Prefect's settings for this process, and its API: a standing `personaloom server` if one runs,
    else (with `start_early`) a temporary server starting now, while Prefect's client side loads;
    `.wait()` on the returned object before the first flow run. Called once every check passed."""
    from personaloom.runtime.prefect_env import apply_prefect_defaults
    from personaloom.runtime.prefect_server import EarlyServer, use_standing_server

    apply_prefect_defaults()
    use_standing_server()  # a running `personaloom server` saves each command its own 12–22 s start
    return EarlyServer() if start_early else None


def _run_config(
    model: Any, fields: dict[str, Any], llm: dict[str, Any], out: Path, *, model_given: bool = True
) -> Any:
    """A replay's or evaluation's config from the flags given, checked before Prefect starts.

    Bad values, a missing dataset or version and an unreachable endpoint each fail in one line.
    """
    from personaloom.dataset.store import DatasetStore
    from personaloom.schemas.config import LLMConfig

    given = {f: v for f, v in fields.items() if v is not None}
    DatasetStore(out, str(given.get("dataset", "")))  # a name that leaves --out fails first, in one line
    try:
        cfg = model.model_validate(
            {**given, "llm": LLMConfig(**{k: v for k, v in llm.items() if v is not None})}
        )
    except ValidationError as e:
        raise UserError(_validation_line(e, None)) from None
    DatasetStore(out, cfg.dataset).resolve(cfg.version)
    output_dir(out, "--out")  # runs are written under the version
    from personaloom.llm.endpoint import check_endpoint  # the OpenAI SDK: 1.5 s, only past every other check

    check_endpoint(cfg.llm, model_given=model_given)
    return cfg


def _split_spec(spec: str) -> tuple[str, str | None]:
    name, _, version = spec.partition("@")
    return name, version or None


# ---------------------------------------------------------------- build


def load_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text.decode())
        return orjson.loads(text)
    except (tomllib.TOMLDecodeError, orjson.JSONDecodeError, UnicodeDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise UserError(f"config file {path} is not valid {kind}: {str(e).splitlines()[0]}") from None


def parse_tokens(text: str | None, flag_name: str) -> int | None:
    """`32k`, `128k`, `1.5m` or `32000` → tokens."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if m is None:
        raise UserError(f"{flag_name} {text!r}: give tokens, e.g. 32k, 128k or 32000")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def make_config(
    file: Path | None,
    overrides: dict[str, Any],
    llm_overrides: dict[str, Any],
    conversation_overrides: dict[str, Any] | None = None,
) -> Any:
    from personaloom.schemas.config import BuildConfig

    data = load_config_file(file) if file else {}
    if not isinstance(data, dict):
        raise UserError(f"config file {file} must hold an object of settings")
    data.update({k: v for k, v in overrides.items() if v is not None})
    if given := {k: v for k, v in (conversation_overrides or {}).items() if v is not None}:
        conversation = data.get("conversation", {})
        if not isinstance(conversation, dict):
            raise UserError(
                f"{file}: conversation: must be a table of settings, e.g. conversation.user_turns"
            )
        data["conversation"] = {**conversation, **given}
    llm = data.get("llm", {})
    if not isinstance(llm, dict):  # else `dict(5)`: a TypeError traceback, or `[]` silently dropped
        raise UserError(
            f"{file}: llm: must be a table of LLM settings, e.g. llm.model, not {type(llm).__name__}"
        )
    llm = dict(llm)
    llm.update({k: v for k, v in llm_overrides.items() if v is not None})
    data["llm"] = llm
    try:
        return BuildConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(
            _validation_line(
                e, str(file) if file and overrides.get(e.errors()[0]["loc"][0]) is None else None
            )
        ) from None


def _priced(llm: Any) -> bool:
    """Whether every model the run may call has a price (else its cost is unknown, never $0)."""
    from personaloom.llm.budget import DEFAULT_PRICES

    table = {**DEFAULT_PRICES, **llm.prices}
    return all(m in table for m in llm.models())


def output_dir(path: Path, option: str) -> Path:
    """personaloom.dataset.store.output_dir, imported when used: `personaloom --help` loads no pyarrow."""
    from personaloom.dataset.store import output_dir as checked

    return checked(path, option)


# ---------------------------------------------------------------- plots and exports of a version

DestOpt = Annotated[Path | None, path_option("--dest", "folder to write to")]
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
SIGNALLED: list[int] = []  # SIGTERM, once received: the exit code says which signal stopped the command


def _chain(e: BaseException) -> Iterator[BaseException]:
    """`e` and every exception behind it (causes, contexts, members of a group)."""
    seen: set[int] = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [c for c in (x.__cause__, x.__context__) if c is not None]
        if isinstance(x, BaseExceptionGroup):
            todo += list(x.exceptions)


def _full_disk(e: BaseException) -> OSError | None:
    """The out-of-space error behind `e`, if any: pyarrow and Python set errno, polars only says
    "(os error 28)"."""
    for x in _chain(e):
        if isinstance(x, OSError) and (x.errno in FULL_DISK or re.search(r"os error (28|122)\b", str(x))):
            return x
    return None


def _llm_error() -> type[Exception]:
    from personaloom.llm.client import LLMError

    return LLMError
