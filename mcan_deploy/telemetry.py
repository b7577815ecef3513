"""Nothing phones home: OpenVINO's converter and NNCF send usage telemetry by default.

``openvino`` (at import and in ``convert_model``) and ``nncf`` (in ``quantize``) report events to
Google Analytics through the ``openvino-telemetry`` package unless the user opted out, and keep a
client id under ``~/intel/``. Both libraries fall back to no-op stubs when that package cannot be
imported, so ``import_openvino``/``import_nncf`` mark it unavailable before the first import;
where the caller's program imported it earlier, its sending methods are muted instead.
"""

from __future__ import annotations

import sys
from types import ModuleType

_PACKAGE = "openvino_telemetry"


def disable() -> None:
    """Keep openvino and nncf from sending telemetry from this process (idempotent)."""
    if _PACKAGE not in sys.modules:
        sys.modules[_PACKAGE] = None  # type: ignore[assignment]  # import fails: both use their stubs
        return
    module = sys.modules[_PACKAGE]
    if module is None:
        return
    try:  # imported before us: refuse consent and mute the shared sender for every later call
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

        OptInChecker.check = lambda self, *a, **k: ConsentCheckResult.DECLINED
    except (ImportError, AttributeError):
        pass
    for name in ("send_event", "start_session", "end_session", "send_error", "send_stack_trace"):
        if hasattr(module, "Telemetry"):
            setattr(module.Telemetry, name, lambda self, *a, **k: None)


def import_openvino() -> ModuleType:
    """``openvino``, imported with telemetry off."""
    disable()
    import openvino

    return openvino


def import_nncf() -> ModuleType:
    """``nncf``, imported with telemetry off."""
    disable()
    import nncf

    return nncf
