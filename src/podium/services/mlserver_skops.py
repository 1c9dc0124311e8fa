"""MLServer runtime that serves scikit-learn models from skops files and refuses untrusted types.

It runs inside MLServer's own venv (mlserver, mlserver-sklearn, skops), never
Podium's, and imports nothing else from Podium but model_signature (numpy only),
so that venv only needs this package on its path: `PYTHONPATH=<podium>/src` in
tests, `pip install --no-deps` of Podium's wheel on nodes. A model-settings.json that uses it:

    {"name": "iris", "implementation": "podium.services.mlserver_skops.SkopsModel",
     "parameters": {"uri": "./iris.skops",
                    "extra": {"trusted_types": [], "trusted": false}}}

`trusted_types` lists the extra types skops may rebuild beyond its safe
defaults; `trusted: true` is what lets a pickle-based file (joblib, pkl) load,
since loading one runs arbitrary code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import skops.io
from mlserver.errors import MLServerError
from mlserver.types import MetadataTensor
from mlserver.utils import get_model_uri
from mlserver_sklearn import SKLearnModel

from podium.services.model_signature import sklearn_signature

SKOPS_SUFFIX = ".skops"
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
WELLKNOWN_FILENAMES = ["model.skops", "model.joblib", "model.pkl", "model.pickle"]


class ModelRefused(MLServerError):  # type: ignore[misc]
    """A model file Podium will not load as configured (HTTP 400 from the repository API)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status_code=400)


def load_model(path: Path, *, trusted_types: list[str], trusted: bool) -> Any:
    """Load a scikit-learn model, rebuilding only types skops trusts or `trusted_types` lists.

    Args:
        path: a .skops file, or a pickle-based file when `trusted` is true.
        trusted_types: fully qualified type names to allow beyond skops' defaults.
        trusted: the stack marks this model trusted, which allows joblib/pickle files.

    Example:
        >>> load_model(Path("iris.skops"), trusted_types=[], trusted=False)  # doctest: +SKIP
    """
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not trusted:
            raise ModelRefused(
                f"{path.name} is a pickle-based file, which runs code when loaded; save the "
                "model with skops.io.dump, or mark the model trusted in the stack."
            )
        return joblib.load(path)
    if suffix != SKOPS_SUFFIX:
        raise ModelRefused(
            f"{path.name} is not a .skops file; save the model with skops.io.dump."
        )
    untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(trusted_types))
    if untrusted:
        raise ModelRefused(
            f"{path.name} contains types that are not trusted: {', '.join(untrusted)}; "
            "review them and list them in parameters.extra.trusted_types to allow them."
        )
    return skops.io.load(path, trusted=list(trusted_types))


def _settings_extra(settings: Any) -> tuple[list[str], bool]:
    extra = (settings.parameters.extra if settings.parameters else None) or {}
    types = extra.get("trusted_types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ModelRefused(
            f"model {settings.name!r}: parameters.extra.trusted_types is {types!r}; "
            "give a list of type names such as [\"_operator.neg\"]."
        )
    trusted = extra.get("trusted", False)
    if not isinstance(trusted, bool):
        raise ModelRefused(
            f"model {settings.name!r}: parameters.extra.trusted is {trusted!r}; give true or false."
        )
    return types, trusted


class SkopsModel(SKLearnModel):  # type: ignore[misc]
    """mlserver-sklearn's runtime (predict, predict_proba, transform) with a safe loader."""

    async def load(self) -> bool:
        types, trusted = _settings_extra(self.settings)
        uri = await get_model_uri(self.settings, wellknown_filenames=WELLKNOWN_FILENAMES)
        self._model = load_model(Path(uri), trusted_types=types, trusted=trusted)
        # GET /v2/models/NAME names the model's inputs and outputs, read from the model as at
        # push time, so a client can build a request from metadata alone; inputs or outputs
        # written in model-settings.json win.
        signature = sklearn_signature(self._model)
        if signature is not None and not self.settings.inputs and not self.settings.outputs:
            self.settings.inputs = [MetadataTensor(**t) for t in signature["inputs"]]
            self.settings.outputs = [MetadataTensor(**t) for t in signature["outputs"]]
        return True
