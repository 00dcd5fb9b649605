//! Runnable examples live beside this crate (`examples/*.rs`); run one with
//! `cargo run -p examples --example <name>`.
//!
//! The workspace README is included below, so that its code sample is
//! compiled by `cargo test`.
#![doc = include_str!("../../README.md")]

pub mod metrics;
