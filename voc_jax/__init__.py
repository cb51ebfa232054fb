"""voc-jax: the Oquab et al. / neon VOC 2007 multiscale-patch transfer experiment in JAX/Flax."""

__version__ = "0.1.0"
