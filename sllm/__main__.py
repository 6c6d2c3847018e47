"""`python -m sllm` runs the command line, as the `sllm` script does."""
from .cli import app

app(prog_name="sllm")
