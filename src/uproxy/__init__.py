"""uproxy: an L4/L7 reverse proxy with an io_uring data plane in C."""
__version__ = "0.1.0"
