"""The static graph IR: op registry, spec validation, `StaticModel`, its compiled eager schedule."""
