"""Provisioners by name: ``get_provisioner("local" | "ssh" | "aws" | "gcp" | "azure", **settings)``.

Each is imported only when asked for, so a missing optional piece of one never breaks another.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import Fleet, GatewayHandle, GatewaySpec, Provisioner

#: What this package gives from .base, imported when first asked for: a coordinator started ahead
#: starts its gateways' processes (.spares) before it imports the control client, the stores and
#: their SDKs' helpers that .base brings (and the planner, which this package's import once brought:
#: ~40 ms before the first gateway's exec at load 20).
_FROM_BASE = ("Fleet", "GatewayHandle", "GatewaySpec", "Provisioner")

#: name -> "module:class", relative to this package.
REGISTRY: dict[str, str] = {
    "local": "local:LocalProvisioner",
    "ssh": "ssh:SSHProvisioner",
    "aws": "aws:AWSProvisioner",
    "gcp": "gcp:GCPProvisioner",
    "azure": "azure:AzureProvisioner",
}


def get_provisioner(name_or_obj: str | Provisioner, **settings: Any) -> Provisioner:
    """A provisioner instance: ``name_or_obj`` itself when it already is one (then no settings may be
    given), else the registered class of that name built with ``settings``."""
    from planner.errors import BadOptionError  # not at the top: .spares must load without the planner

    from .base import Provisioner

    if isinstance(name_or_obj, Provisioner):
        if settings:
            raise BadOptionError(f"settings {sorted(settings)} given with a ready-made {name_or_obj.name} provisioner",
                                 hint="pass the settings to its constructor instead")
        return name_or_obj
    target = REGISTRY.get(name_or_obj) if isinstance(name_or_obj, str) else None
    if target is None:
        raise BadOptionError(f"unknown provisioner {name_or_obj!r}", hint=f"choose one of {', '.join(REGISTRY)}")
    module, _, cls = target.partition(":")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ImportError as exc:
        raise BadOptionError(f"the {name_or_obj} provisioner cannot be loaded: {exc}",
                             hint="install its dependencies, or choose another provisioner") from exc
    return getattr(mod, cls)(**settings)


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REGISTRY", "Fleet", "GatewayHandle", "GatewaySpec", "Provisioner", "get_provisioner"]
