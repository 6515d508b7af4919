"""synthct: unpaired MR <-> CT translation with medical-grade I/O."""

__version__ = "0.1.0"
