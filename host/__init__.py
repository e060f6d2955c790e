"""dpfpga host package."""
