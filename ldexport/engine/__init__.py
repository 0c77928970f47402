"""Training and evaluation: the loop (:mod:`.loop`), the run around it (:mod:`.run`).

``train`` and ``evaluate_checkpoint`` are what the ``train`` and ``eval`` commands call;
``train_one_epoch`` and ``evaluate`` are the loop they drive.
"""

from ldexport.engine.loop import evaluate, train_one_epoch
from ldexport.engine.run import TrainResult, evaluate_checkpoint, train

__all__ = ["TrainResult", "evaluate", "evaluate_checkpoint", "train", "train_one_epoch"]
