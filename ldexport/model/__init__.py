"""The GFL detector in pure PyTorch (no mmcv at run time)."""

from ldexport.model.build import ModelConfig, build_detector
from ldexport.model.detector import Detections, GFLDetector, TestConfig

__all__ = ["Detections", "GFLDetector", "ModelConfig", "TestConfig", "build_detector"]
