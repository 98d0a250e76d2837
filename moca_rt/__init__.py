"""moca_rt: deployable unsupervised audio-visual segmentation (MoCA)."""

__version__ = "0.1.0"
