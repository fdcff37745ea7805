//! balena v3 delta images: build, self-check and apply.
//!
//! A v3 delta image has exactly as many layers as the target image. Layers in
//! the common ChainID prefix are empty tars; every other layer is a tar whose
//! single `delta` entry is a librsync delta stream against the *basis*: the
//! concatenation of all uncompressed source layer tars. Two config labels tell
//! balena-engine which image to patch and which config the result gets.

pub mod chain;
pub mod config;
pub mod layer;
