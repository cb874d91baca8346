"""melanet: hybrid image + DICOM-metadata classification (CNN+metadata fusion, GBDT, blend)."""

__version__ = "0.1.0"
