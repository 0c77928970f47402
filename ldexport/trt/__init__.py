"""TensorRT: readiness of an ONNX graph, engine building, loading and running.

Modules (TensorRT itself is imported only inside the functions that need it, so that
``import ldexport.trt.readiness`` and ``ldexport --help`` work on any machine):

| module | what it holds |
| --- | --- |
| ``readiness`` | ``check_onnx`` / ``format_problems``: what TensorRT's parser accepts (pure onnx) |
| ``problem`` / ``graphview`` | a finding and its report; lookups over a graph the rules share |
| ``onnx_ops`` | the table of ONNX ops TensorRT 10.x parses, with the release that added each |
| ``dtypes`` | the element types TensorRT accepts, and the checks of a graph's types |
| ``qdq`` | Q/DQ nodes TensorRT refuses or reinterprets (zero points, uint8, int32) |
| ``profile`` | shapes and optimisation profiles, read from the ONNX metadata (keys: :mod:`ldexport.export.keys`) |
| ``backend`` | is a real TensorRT and a CUDA GPU here? (the stubs make ``import tensorrt`` work); ``register_plugins`` |
| ``build`` | ``build_engine``: ONNX -> serialized engine + JSON sidecar |
| ``precision`` | the decode layers kept in fp32 in fp16 / int8 engines |
| ``calib`` | INT8 entropy calibration, images fed through the graph's ``InputSpec`` |
| ``sidecar`` / ``engine`` | what an engine was built with; ``load_engine`` refuses a mismatch |
| ``runner`` | ``TensorRTRunner``: the parity ``Runner`` on torch CUDA buffers, every output through one ``IOutputAllocator`` |
"""
