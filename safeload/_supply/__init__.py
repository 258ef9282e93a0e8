"""Supply-chain outputs: the CycloneDX ML-BOM of what a policy pins, and publishing models to OCI
registries."""
