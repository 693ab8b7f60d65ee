"""MkDocs hook: the reference tables that must not drift from the code, generated at build time.

A page asks for one with a marker line:

    <!-- generated: settings tasks_engine.core.config:EngineSettings -->
    <!-- generated: cli -->

``settings`` renders one row per field of a pydantic-settings model: its environment variable(s),
type, default and description, read from ``model_fields`` and ``model_config``. ``cli`` walks the
click command tree that typer builds for ``tasks-engine`` (typer vendors its own click, so the walk
is by duck typing, not ``isinstance``) and renders every command with its usage,
help and options. A marker naming something that doesn't exist fails the build. The hook also drops the Sphinx roles
of the engine's docstrings from the rendered API pages.
"""

from __future__ import annotations

import html
import importlib
import re
from typing import Any

from pydantic import AliasChoices, SecretStr

MARKER = re.compile(r"^<!-- generated: (\w+)(?: (\S+))? -->$", re.MULTILINE)
SPHINX_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):(?=<code>)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(lambda m: render(m.group(1), m.group(2), page.file.src_path), markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """The engine's docstrings use Sphinx roles (``:class:`X```); Markdown shows them as text, so drop
    the role and keep the code span."""
    return SPHINX_ROLE.sub("", html)


def render(kind: str, arg: str | None, where: str) -> str:
    if kind == "settings" and arg:
        module, _, name = arg.partition(":")
        return settings_table(getattr(importlib.import_module(module), name))
    if kind == "cli":
        return cli_reference()
    raise ValueError(f"{where}: unknown generated block {kind!r} {arg!r}")


# ---------------------------------------------------------------- settings
def type_name(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b(typing|pydantic\.types|datetime)\.", "", text)


def default_of(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, SecretStr):  # a default is public: only the user's value is a secret
        value = value.get_secret_value()
    return "—" if value is None else repr(value)


def env_names(model: Any, name: str, field: Any) -> list[str]:
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    if isinstance(alias, str):
        return [alias]
    return [(model.model_config.get("env_prefix", "") + name).upper()]


def settings_table(model: Any) -> str:
    """A Markdown table (Material styles it); Python-Markdown leaves pipes inside code spans alone."""
    rows = ["| setting | environment | type | default | what it does |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        envs = "<br>".join(f"`{env}`" for env in env_names(model, name, field))
        description = html.escape(field.description or "").replace("|", "&#124;")
        rows.append(f"| `{name}` | {envs} | `{type_name(field.annotation)}` | `{default_of(field)}` | {description} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- CLI
def cli_reference() -> str:
    import typer

    from tasks_engine.cli import app

    root = typer.main.get_command(app)
    out: list[str] = []
    walk(root, "tasks-engine", out, depth=2)
    return "\n".join(out)


def walk(command: Any, path: str, out: list[str], depth: int) -> None:
    ctx = command.context_class(command, info_name=path)
    if depth > 2:
        out.append(f"{'#' * min(depth, 4)} `{path}`\n")
    help_text = inspect_help(command)
    if help_text:
        out.append(help_text + "\n")
    pieces = ["[OPTIONS]"]
    for param in command.params:
        if param.param_type_name == "argument":
            pieces.append(param.name.upper() + ("..." if param.nargs == -1 else ""))
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    pieces = " ".join(pieces)
    out.append(f"```text\n{path} {pieces}\n```\n")
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        out.append("| option | type | default | help |\n|---|---|---|---|")
        for param in params:
            out.append(param_row(param, ctx))
        out.append("")
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                walk(sub, f"{path} {name}", out, depth + 1)


def inspect_help(command: Any) -> str:
    text = (command.help or command.short_help or "").strip()
    text = text.split("\f", 1)[0]
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def cell(text: str) -> str:
    """Python-Markdown's tables leave pipes inside code spans alone; elsewhere they'd split the cell."""
    return text.replace("\n", " ")


def param_row(param: Any, ctx: Any) -> str:
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}` (argument)"
    else:
        opts = list(param.opts) + list(getattr(param, "secondary_opts", []))
        names = ", ".join(f"`{opt}`" for opt in opts)
    descriptor = getattr(param, "type_descriptor", None)
    annotation = descriptor.annotation if descriptor is not None else getattr(param, "type", None)
    kind = "flag" if annotation is bool or getattr(param, "is_flag", False) else type_name(annotation)
    default = param.default
    if callable(default) or default in (None, (), []) or (kind == "flag" and default is False):
        shown = ""
    else:
        shown = f"`{default!r}`"
    help_text = (getattr(param, "help", None) or "").replace("|", "&#124;")
    return f"| {cell(names)} | `{cell(kind)}` | {cell(shown)} | {cell(help_text)} |"
