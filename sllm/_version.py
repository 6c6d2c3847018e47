"""The version of sllm (one place: the package, the file formats and the CLI read it)."""

__version__ = "0.1.0"
