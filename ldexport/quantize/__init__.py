"""INT8 quantization of an exported graph in the ONNX QDQ form (explicit quantization).

| module | what it holds |
| --- | --- |
| ``qdq`` | ``quantize_onnx``: calibrate with ONNX Runtime, write the Q/DQ graph; ``QuantizeSettings`` |
| ``graph`` | which nodes are quantized and which stay float (``decode/``, ``preprocess/``, exclusions); ``is_quantized`` |
| ``calibration`` | calibration images as graph feeds (``calibration_feed``), the reader, the set's SHA-256 |

onnx and onnxruntime are imported inside the functions that use them.
"""
