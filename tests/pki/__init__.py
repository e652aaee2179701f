"""PKI tests: CSR checks, signers, LocalIssuer, the dev PKI, the profile checker, PKCS#11."""
