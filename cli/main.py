"""siamese-index: the command group. Commands import the library lazily so --help is instant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from . import dedup_cmds, index_cmds, model_cmds, retrain_cmds, service_cmds
from .output import CommandError, UsageCommandError, command_error, quiet_tensorflow, set_verbose

# --help lists the commands by task, in this order; every command belongs to exactly one section
# (tests/test_cli_shell.py checks it, so a new command must be placed here).
SECTIONS: dict[str, tuple[str, ...]] = {
    "Getting started": ("demo",),
    "People": ("enroll", "enroll-dir", "people"),
    "Lookup": ("identify", "verify", "feedback", "dedup"),
    "Maintenance": ("status", "check", "backup"),
    "Models of a home": ("models", "retrain", "reembed"),
    "Service": ("serve", "keys"),
    "Training towers": ("train", "evaluate", "calibrate", "ensemble", "embed", "teacher"),
}
OTHER_SECTION = "Other commands"


def section_of(name: str) -> str:
    return next((title for title, names in SECTIONS.items() if name in names), OTHER_SECTION)


class TaskGroup(click.Group):
    """A group whose --help lists commands by task and whose errors all read `error: ...`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = [name for names in SECTIONS.values() for name in names]
        return sorted(self.commands, key=lambda n: (order.index(n) if n in order else len(order), n))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, list[tuple[str, str]]] = {}
        limit = formatter.width - 6 - max((len(n) for n in self.commands), default=0)
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.setdefault(section_of(name), []).append((name, command.get_short_help_str(limit)))
        for title in [*SECTIONS, OTHER_SECTION]:
            if rows.get(title):
                with formatter.section(title):
                    formatter.write_dl(rows[title])

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.ClickException as e:
            raise as_command_error(e, args) from e
        ctx.meta["siamese_index.argv"] = list(args)
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:  # a sub-command's usage error, or one left untranslated
            raise as_command_error(e, ctx.meta.get("siamese_index.argv", [])) from e


def as_command_error(e: click.ClickException, argv: Sequence[str]) -> CommandError:
    """Any click error as the one error format; a usage error shows the usage line first."""
    if isinstance(e, CommandError):
        return e
    as_json = "--json" in argv
    if isinstance(e, click.UsageError) and e.ctx is not None and not as_json:
        usage = f"{e.ctx.get_usage()}\nTry '{e.ctx.command_path} --help' for help."
        return UsageCommandError(f"{e.format_message()}\n{usage}", "UsageError")
    return command_error(e, as_json=as_json)


@click.group(cls=TaskGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="siamese-index")
@click.option(
    "--verbose", "-v", is_flag=True, help="Show TensorFlow's start-up messages and warnings (hidden by default)."
)
def cli(verbose: bool) -> None:
    """Embed images with a Siamese tower; enroll, identify, verify and deduplicate.

    Distances are plain L2; two images are "the same" when their distance is below the
    model's calibrated threshold. Errors print one `error: ...` line (JSON under --json) and
    exit with status 1; a usage error exits with 2.
    """
    set_verbose(verbose)
    quiet_tensorflow()  # cheap: no import; TensorFlow, when a command needs it, loads quietly


for command in (
    model_cmds.COMMANDS + index_cmds.COMMANDS + service_cmds.COMMANDS + retrain_cmds.COMMANDS + dedup_cmds.COMMANDS
):
    cli.add_command(command)
