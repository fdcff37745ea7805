//! balena v3 delta images: build, self-check and apply.
