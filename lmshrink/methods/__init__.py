"""Built-in compression methods. A new method is one file here plus one import line below."""

from . import svd  # noqa: F401
from . import groupreduce, prune, quantize  # noqa: F401  (vocabulary: GroupReduce, pruning, quantization)
from . import doped_kronecker, hmd, kronecker, tensor_train  # noqa: F401  (recurrent: KP, doped KP, HMD, TT)
from . import binary  # noqa: F401  (binary codes: IIQ / ITQ / sign)
