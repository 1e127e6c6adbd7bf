"""The eBPF data path: the filter table lowered to a bit-vector classifier."""
