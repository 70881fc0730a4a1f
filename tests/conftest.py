"""pytest configuration shared by all tests.

The backend is chosen by KERAS_BACKEND before Keras is imported
(`tests/run_all.py` runs the `multibackend` tests once per backend); shared
helpers live in tests/common.py.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
