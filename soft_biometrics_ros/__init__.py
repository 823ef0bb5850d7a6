"""soft_biometrics_ros: per-face age group, gender and emotion from PE-Core."""

__version__ = '0.1.0'
