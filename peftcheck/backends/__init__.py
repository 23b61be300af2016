"""Backends other than peft that build and apply an adapter (methods.py dispatches on ``backend``).

A backend module provides ``build_config(method, *, name)``, which raises MissingExtraError when
its library cannot be imported and SuiteError for a wrong config, and ``apply(model, config, *,
quantization, name)``, which returns the model with the adapter in training mode and a
``get_base_model()`` whose parameters are named like the plain base model's.
"""

__all__ = ["adapters"]
