//! The one integration-test binary: real binary, real HTTP on loopback, real files.
//! Each module is owned by one area; the fake hub lives in `tests/fake_hub/`.

#[path = "../fake_hub/mod.rs"]
#[allow(dead_code)]
mod fake_hub;

mod apply_engine;
mod architecture;
mod browse;
mod cli;
mod containment;
mod downloads;
mod fake_hub_selftest;
mod fleet;
mod gitops;
mod hostile_hub;
mod hub_client;
mod interop;
mod machine;
mod migrate;
mod proxy;
mod reliability;
mod seaweedfs;
mod storm;
mod support;
mod tls;
mod verbs;
