"""Proving tensor by tensor that an exported model computes what the PyTorch student does.

| module | what it holds |
| --- | --- |
| ``base`` | ``Runner``: named numpy inputs -> named numpy outputs |
| ``runners`` | ``TorchRunner`` (reference: model + its own decoding, ``predict``), ``OnnxRuntimeRunner``, ``tensorrt_runner`` |
| ``inputs`` | photographs resized as deployment resizes them, random inputs, batches |
| ``compare`` | Polygraphy-style per-output statistics and tolerances |
| ``detections`` | detection-level matching (same label, IoU >= 0.99, both ways) |
| ``check`` | ``run_parity``: every case through every runner, against the reference |
| ``report`` | the table and the JSON report |
"""
