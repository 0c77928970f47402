"""ldexport: distill GFL detectors with Localization Distillation, export, and prove parity."""

__version__ = "0.1.0"
