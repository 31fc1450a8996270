"""`personaloom.build(...)` and `personaloom.evaluate(...)` are the Python API, yet `personaloom.build` and
`personaloom.evaluate` are also modules of the package (importing a submodule sets the package attribute to
the module, whatever was there). So those two modules are callable: calling one calls the API function."""

from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module_name: str, target: str) -> None:
    """Calling the module `module_name` calls `personaloom.api.<target>`."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from personaloom import api

            return getattr(api, target)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
