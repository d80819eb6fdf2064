"""syncd: keep WooCommerce stock identical across the blogs of a WordPress multisite network."""

__version__ = "0.1.0"
