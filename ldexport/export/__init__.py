"""ONNX export of a trained student, with the box decoding (and optionally NMS and image
preprocessing) inside the graph.

| module | what it holds |
| --- | --- |
| ``deploy`` | ``DeployDetector``, the one wrapper whose trace is the graph; ``build_deploy_model`` |
| ``decode`` | ``Decode``: sigmoid, integral (MatMul), stride, anchor points, distance2bbox, clip |
| ``nms`` | ``OnnxNMS`` (ONNX NonMaxSuppression) and ``EfficientNMS`` (TensorRT plugin) stages |
| ``preprocess`` | uint8 BGR input normalised in the graph, BGR folded into the first conv |
| ``options`` | ``ExportOptions`` and the input sizes a detector can take |
| ``keys`` | every ``metadata_props`` key (their one owner) and the TensorRT profile entries |
| ``metadata`` | the ``metadata_props`` written and read back (``read_onnx_info``, ``read_input_spec``) |
| ``exporter`` | ``export_onnx``: trace, check, simplify, metadata, atomic write |
| ``student`` | ``export_student``: config + checkpoint -> ONNX file, returning what it wrote |

onnx, onnxruntime and onnxslim are imported by these modules, so import them only where
an export or a parity check is run (the commands do, inside their functions).
"""
