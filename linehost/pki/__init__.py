"""Matter PKI: CSR checks, DAC issuing behind one interface, the attestation profile checker."""
