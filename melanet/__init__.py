"""melanet: hybrid image + DICOM-metadata classification (CNN+metadata fusion, GBDT, blend)."""

import os as _os

# Nothing reaches the network at run time (DESIGN.md "Errors"). albumentations (>= 1.4.x) asks PyPI for
# its latest version on import unless NO_ALBUMENTATIONS_UPDATE is "1"/"true"; every melanet module is
# imported after this package, so setting it here covers the library path (melanet.train.data) as well
# as the CLI. It is forced, not defaulted: a stray NO_ALBUMENTATIONS_UPDATE=0 must not open a socket.
_os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

__version__ = "0.1.0"
