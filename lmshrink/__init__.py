"""lmshrink: make trained neural language models really smaller and really faster."""

__version__ = "0.1.0"

from .compress import Plan, compress, load_plan, make_config, register_method  # noqa: E402
from .errors import LmshrinkError  # noqa: E402
from .io import load_model_dir, save_model_dir  # noqa: E402

__all__ = ["LmshrinkError", "Plan", "__version__", "compress", "load_model_dir", "load_plan", "make_config",
           "register_method", "save_model_dir"]
