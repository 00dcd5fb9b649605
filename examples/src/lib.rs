//! Runnable examples live beside this crate (`examples/*.rs`); run one with
//! `cargo run -p examples --example <name>`.
//!
//! The services that examples serve are library modules, so that their
//! tests can start them: [`metrics`] (the Prometheus endpoint of
//! `examples/metrics.rs`) and [`graphql`] (the GraphQL service of
//! `examples/graphql.rs`).
//!
//! The workspace README is included below, so that its code sample is
//! compiled by `cargo test`.
#![doc = include_str!("../../README.md")]

pub mod graphql;
pub mod metrics;
