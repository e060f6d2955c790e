"""dpfpga sim package."""
