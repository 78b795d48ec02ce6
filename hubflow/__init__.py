"""hubflow: Prefect 3 flows for the Hugging Face Hub life cycle."""
__version__ = "0.1.0"
