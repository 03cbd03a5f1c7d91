"""MLflow models-from-code entry for a Keel artifact; copied into every version Keel
registers as `keel_model.py`, and executed by `mlflow.pyfunc.load_model`.

It only names Keel's loader: `KeelPyfuncModel.load_context` verifies the artifact's signature
and hashes against the loading process's trust policy before deserialising anything.
"""

from mlflow.models import set_model

from keel.registry_client.pyfunc import KeelPyfuncModel

set_model(KeelPyfuncModel())
