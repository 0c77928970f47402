"""Using what was exported: a model behind any runner (PyTorch, ONNX Runtime, TensorRT),
fed by its input contract, evaluated, run on images, timed.

| module | what it holds |
| --- | --- |
| ``model`` | ``RuntimeModel`` (a runner + its ``InputSpec`` and decoding) and ``open_onnx`` / ``open_engine`` / ``open_checkpoint`` |
| ``evaluate`` | ``evaluate_model(model, data)``: COCO AP through the model's own input contract |
| ``predict`` | ``predict_images``: detections of image files, COCO results JSON, annotated images (``draw``) |
| ``bench`` | ``bench_model``: warm-up, then p50/p90/p99 latency and images/s |
| ``parity`` | ``parity_session``: ``ldexport parity`` from files |

Layer: above ``parity`` and ``trt``, below ``commands``. TensorRT is imported only by
``open_engine``.
"""
