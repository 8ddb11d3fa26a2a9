"""Tools to test triplet-loss implementations: a conformance kit, label regimes and
hypothesis strategies.

* :func:`check_loss` / :func:`assert_loss_conforms` / :class:`Report`
  (``triplet_ref.testing.kit``): run any ``fn(labels, embeddings)`` on the conformance
  catalog and compare it with the contract, naming the known variants it follows
  (``docs/testing-your-loss.md``);
* ``triplet_ref.testing.regimes``: label regimes, plain NumPy;
* ``triplet_ref.testing.strategies``: hypothesis strategies (imports hypothesis);
* ``python -m triplet_ref.testing.peers``: the peer-difference table of
  ``docs/semantics.md``, produced by the kit on the installed peers.

Importing this package imports neither hypothesis nor pytest nor a framework; the backend
a check names is imported when the check runs.
"""
from .kit import Finding, Report, assert_loss_conforms, check_loss, variant_name
from .variants import BEHAVIOURS, VARIANTS

__all__ = ["check_loss", "assert_loss_conforms", "Report", "Finding", "variant_name",
           "VARIANTS", "BEHAVIOURS"]
