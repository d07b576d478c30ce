"""Everything that measures a model, under one protocol (see ``protocol``).

Importing the package registers every evaluator: accuracy, the geometry analyzers and
the robustness evaluators each register themselves with ``protocol.register``.
"""
from vitsam.evaluators import accuracy, geometry, robustness  # noqa: F401  (registration)
