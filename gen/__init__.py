"""dpfpga gen package."""
