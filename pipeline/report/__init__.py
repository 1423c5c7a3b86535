"""The report: figures and tables built from cached artifacts."""
