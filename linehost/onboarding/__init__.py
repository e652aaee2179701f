"""Matter onboarding data per device: passcodes, discriminators, verifiers, codes, labels."""
