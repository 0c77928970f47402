"""Proving tensor by tensor that an exported model computes what the PyTorch student does.

| module | what it holds |
| --- | --- |
| ``base`` | ``Runner``: named numpy inputs -> named numpy outputs |
| ``runners`` | ``TorchRunner`` (model + its own decoding, ``predict``), ``OnnxRuntimeRunner`` (TensorRT's: ``ldexport.trt.runner``) |
| ``inputs`` | photographs fed by the graph's ``InputSpec``, random inputs, batches |
| ``compare`` | Polygraphy-style per-output statistics and tolerances |
| ``detections`` | detection-level matching (same label, IoU >= 0.99, both ways); any runner's outputs as detections |
| ``check`` | ``check_parity``: every case through every runner, against any runner as the reference |
| ``report`` | the table and the JSON report |
"""
