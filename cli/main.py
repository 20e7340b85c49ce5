"""siamese-index: the command group. Commands import the library lazily so --help is instant."""

from __future__ import annotations

import click

from . import dedup_cmds, index_cmds, model_cmds, retrain_cmds, service_cmds


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="siamese-index")
def cli():
    """Embed images with a Siamese tower; enroll, identify, verify and deduplicate.

    Distances are plain L2; two images are "the same" when their distance is below the
    model's calibrated threshold.
    """


for command in (
    model_cmds.COMMANDS + index_cmds.COMMANDS + service_cmds.COMMANDS + retrain_cmds.COMMANDS + dedup_cmds.COMMANDS
):
    cli.add_command(command)
