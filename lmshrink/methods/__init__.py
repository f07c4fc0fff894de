"""Built-in compression methods. A new method is one file here plus one import line below."""

from . import svd  # noqa: F401
