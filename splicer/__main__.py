"""``python -m splicer`` (and ``torchrun -m splicer``): the command line."""

from splicer.cli.main import app

app(prog_name="splicer")
