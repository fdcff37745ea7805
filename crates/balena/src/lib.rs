//! balenaCloud / openBalena API client (pine v7, delta trigger, settings and token).
