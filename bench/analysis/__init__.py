"""One-off analyses of the data (not benchmarks): tumour contrast, tumour texture, insertion intensity bias."""
