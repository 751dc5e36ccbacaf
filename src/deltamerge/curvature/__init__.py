"""Curvature of the last hidden features (GGN under an identity/MSE loss) and the drift penalties it defines.

``Curvature`` (factors.py) is the base class and the public name: ``EKFAC`` and ``KFAC`` (kronecker.py) are its two
Kronecker-factored approximations, dense blocks (dense.py) an additive term on either. ``estimate_curvature``
(estimate.py) builds one, ``Curvature.load`` reads one back as the class its file names.
"""

from deltamerge.curvature.factors import Curvature, LayerCurvature, curvature_class, sum_terms
from deltamerge.curvature.kronecker import EKFAC, KFAC
from deltamerge.curvature.estimate import estimate_curvature

__all__ = ["Curvature", "EKFAC", "KFAC", "LayerCurvature", "curvature_class", "estimate_curvature", "sum_terms"]
