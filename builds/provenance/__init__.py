"""What a build says about its image: SLSA provenance, SBOM, DSSE, cosign's layout, signing and verifying."""
