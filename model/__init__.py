"""dpfpga model package: data, float DeePMD-style model, quantization, fixed-point reference."""
