"""The registered pyfunc, logged as an MLflow "model from code".

``vista.tracking.log_model`` passes the path of this file (not an object) to ``mlflow.pyfunc.log_model``:
MLflow copies the file into the model folder and runs it at load time, where ``mlflow.models.set_model``
names the model. Nothing is cloudpickled; the weights are the training checkpoint, an artifact of the
model, loaded with ``weights_only=True``. The ``vista`` package travels with the model (``code_paths``).
"""

from __future__ import annotations

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from vista.tracking import CHECKPOINT_ARTIFACT


class VistaPyfunc(PythonModel):
    """A trained VISTA-Net as an MLflow pyfunc.

    Input: uint8 RGB images, ``N×H×W×3`` (or one ``H×W×3``), any H and W.
    Output: a dict of numpy arrays per task of the model: ``depth`` ``N×H×W`` float32 metres,
    ``seg`` ``N×H×W`` int32 class ids, ``normal`` ``N×H×W×3`` float32 unit vectors.
    """

    _skip_type_hint_validation = True  # mlflow: the signature validates inputs, not type hints

    def load_context(self, context):  # type: ignore[no-untyped-def]
        from vista.recipe import load_trained

        self.model, self.params = load_trained(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        from vista.data.batch import imagenet_normalize

        x = np.asarray(model_input)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB images N×H×W×3, got {x.dtype} array of shape {x.shape}")
        rgb = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
        with torch.no_grad():
            out = self.model(imagenet_normalize(rgb))
        result: dict[str, np.ndarray] = {}
        if "depth" in out:
            result["depth"] = out["depth"][:, 0].numpy()
        if "seg" in out:
            result["seg"] = out["seg"].argmax(1).to(torch.int32).numpy()
        if "normal" in out:
            result["normal"] = out["normal"].permute(0, 2, 3, 1).contiguous().numpy()
        return result


set_model(VistaPyfunc())
