//! Layers whose timing a test controls.
