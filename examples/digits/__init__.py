"""End-to-end example: metric learning on the scikit-learn 8x8 digits with triplet_ref.

One loss implementation (``triplet_ref``) trains the same network in PyTorch and in JAX.
Run ``make example`` (or ``python examples/digits/train.py --all``) from the repository root.
"""
