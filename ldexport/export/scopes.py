"""The name scopes of an exported graph, as regular expressions over node names.

The TorchScript exporter names every node by the module path of the deploy wrapper
(:mod:`ldexport.export.deploy`): ``/preprocess/Sub``, ``/detector/backbone/conv1/Conv``,
``/decode/Softmax_2``, ``/decode/nms/NonMaxSuppression``. TensorRT keeps the ``decode/``
layers in fp32 (:mod:`ldexport.trt.precision`) and INT8 quantization leaves the
``decode/`` and ``preprocess/`` nodes in float (:mod:`ldexport.quantize`), both by these
patterns.
"""

from __future__ import annotations

# the box decoding and the in-graph NMS (``decode/nms/``)
DECODE_PATTERN = r"(?:^|/)decode/"
# the in-graph normalisation of uint8 BGR input
PREPROCESS_PATTERN = r"(?:^|/)preprocess/"
