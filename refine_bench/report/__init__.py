"""Results store readers, the paper's tables and plots, the metric history, regression check and dashboard."""
