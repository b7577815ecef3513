"""Checks of an exported model run the way ``mcan-upscale`` runs it, through its runner and the
tiler: the OpenVINO export's float32 check and write (``openvino``) and the int8 quality gate
(``int8``). Above ``runners`` and ``tiling`` because it runs them; ``export`` below converts and
quantizes and runs nothing."""
