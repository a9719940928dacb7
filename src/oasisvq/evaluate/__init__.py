"""Image-quality metrics and figures for reconstructions and samples."""
