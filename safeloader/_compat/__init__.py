"""What safeloader needs from the libraries around it: tested version ranges, and diffusers' internals."""
