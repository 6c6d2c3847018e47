"""`python -m sllm` runs the command line, as the `sllm` script does (sllm/_entry.py)."""
from ._entry import main

main()
