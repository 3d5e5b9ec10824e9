"""raw2rgb: learned RAW-to-RGB mapping (saliency-map-aided GAN, Zhao et al. 2019) and its toolchain."""

__version__ = "0.1.0"
