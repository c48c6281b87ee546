"""Build targets, one module each. Kept import-free: the TFLite worker runs in another venv."""
