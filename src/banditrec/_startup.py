"""Start-up costs a process can skip: numba's NumPy support without scipy.linalg.

The first call of any compiled kernel, even one loaded from numba's cache, initialises
numba's CPU target, which imports ``numba.np.arraymath``; that module imports
``scipy.linalg`` (0.3-0.5 s, more than the rest of a `train` process's imports) only to
decide once whether a 1-D float inner product (``np.dot`` of two vectors in compiled code)
may call BLAS. banditrec's kernels never call BLAS. `import_numba_numpy_support` imports
that module with scipy.linalg out of sight, so it takes its loop instead; scipy stays
importable afterwards, and code compiled later that needs BLAS still finds it (numba imports
it again when it compiles such a call).
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["import_numba_numpy_support"]

#: The module `numba.np.arraymath` tries to import to find BLAS.
_BLAS_MODULE = "scipy.linalg.cython_blas"


def import_numba_numpy_support() -> None:
    """Import ``numba.np.arraymath`` now, without importing scipy.linalg.

    Does nothing if numba's NumPy support is already imported, and imports it as usual if
    scipy.linalg already is (then there is nothing to save).

    Examples
    --------
    >>> import sys
    >>> from banditrec._startup import import_numba_numpy_support
    >>> import_numba_numpy_support()
    >>> "numba.np.arraymath" in sys.modules
    True
    """
    if "numba.np.arraymath" in sys.modules or _BLAS_MODULE in sys.modules:
        importlib.import_module("numba.np.arraymath")
        return
    # A None entry makes `import scipy.linalg.cython_blas` fail at once, before it imports
    # the scipy and scipy.linalg packages (the import system checks the full name first).
    sys.modules[_BLAS_MODULE] = None  # type: ignore[assignment]
    try:
        importlib.import_module("numba.np.arraymath")
    finally:
        if sys.modules.get(_BLAS_MODULE, ...) is None:
            del sys.modules[_BLAS_MODULE]
