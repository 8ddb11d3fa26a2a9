"""Tools to test triplet-loss implementations: label regimes and hypothesis strategies.

``triplet_ref.testing.regimes`` is plain NumPy; ``triplet_ref.testing.strategies`` imports
hypothesis.  Importing this package imports neither hypothesis nor pytest nor a framework.
"""
