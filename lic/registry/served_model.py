"""The model file of a registered codec: MLflow runs this (and only shipped code) when it loads the model.

Logged as the pyfunc's `python_model` ("models from code", `lic.registry.pyfunc.log_codec_model`) instead of a
cloudpickled object, so a registered model holds no pickle; the weights are read in `CodecModel.load_context`
with `torch.load(weights_only=True)`.
"""

from mlflow.models import set_model

from lic.registry.pyfunc import CodecModel

set_model(CodecModel())
