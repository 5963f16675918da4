"""The one compiled piece of sessiond-client, optional: everything else is in pyproject.toml.

``sessiond_client/protocol/_datarun.c`` takes runs of fixed-width DATA frames on the
receive path (see ``codec.take_data_run``). It is built where a C compiler and the
Python headers are present; where they are not (IoT images, Windows without Visual
C++), ``optional=True`` lets the install go on without it and the pure-Python path runs,
with the same results. ``SESSIOND_PURE=1`` selects the pure-Python path where it is built.
"""

import platform

from setuptools import Extension, setup

LOOP = Extension(
    "sessiond_client.protocol._datarun",
    ["sessiond_client/protocol/_datarun.c"],
    optional=True,
)
# Written against CPython's C API; PyPy's emulation of it would be slower than its JIT.
setup(ext_modules=[LOOP] if platform.python_implementation() == "CPython" else [])
