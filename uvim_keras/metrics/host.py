"""Moving backend tensors to host numpy."""

import keras
import numpy as np


def to_numpy(x):
    """Host numpy view of a numpy array or any Keras backend tensor."""
    if x is None or isinstance(x, np.ndarray):
        return x
    return np.asarray(keras.ops.convert_to_numpy(x))
