"""The exceptions sllm raises on bad input: each names what is wrong and what to do.

Every error that sllm raises to its caller on purpose derives from SLLMError and from the
built-in type it refines (ValueError for bad input, RuntimeError for a state that cannot
work). Exceptions that never leave sllm are not here: the server's ApiError becomes an
HTTP response, the wasm runtime's RuntimeUnavailable a backend's "unavailable" reason.
"""


class SLLMError(Exception):
    """Base class of every error sllm raises to its caller on purpose."""


class ConfigError(SLLMError, ValueError):
    """A model or training configuration is invalid; the message names the key."""


class FormatError(SLLMError, ValueError):
    """A model file is malformed: truncated, corrupt, or of an unknown version."""


class BackendError(SLLMError, RuntimeError):
    """A backend is unknown, unavailable, or failed while running a kernel."""


class DataError(SLLMError, ValueError):
    """A corpus or tokenizer input cannot be used (empty, not UTF-8, too short)."""


class QuantizationError(SLLMError, ValueError):
    """Input that cannot be quantized: an unknown type, NaN/inf, or a scale beyond float16."""


class ExportError(SLLMError, ValueError):
    """A model cannot be written in, or read from, another format; says why."""


class DependencyError(SLLMError, RuntimeError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class LoraError(ConfigError):
    """A LoRA adapter does not fit the model: another base, a quantized merge, a clash."""
