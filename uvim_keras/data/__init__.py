"""Datasets: procedural synthetic tasks (see `uvim_keras.data.synthetic`).

>>> from uvim_keras.data import make_panoptic_shapes
>>> make_panoptic_shapes(2, size=32)["image"].shape
(2, 32, 32, 3)
"""

from uvim_keras.data.synthetic import *  # noqa: F401,F403
from uvim_keras.data.synthetic import __all__  # noqa: F401
