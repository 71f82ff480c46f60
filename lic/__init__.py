"""LoC-LIC: a low-complexity learned image codec and the pipeline that trains, evaluates and registers it."""

__version__ = "0.1.0"

import warnings

# CompressAI 1.2.8 calls torch.jit.script at import time; torch 2.14 warns about it on every `import compressai`.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
