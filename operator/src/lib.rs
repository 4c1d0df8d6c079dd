//! chat-operator: the ChatCluster API, its reconciler and the builders of every child object.
//!
//! Layers, outermost first: [`cli`] (flags) → [`run`] (client, leader election, admin server,
//! controller, one shutdown signal) → [`reconcile`] (gather state, call builders, apply, status)
//! → [`children`] (pure builders, one file per kind) → [`api`] (the `ChatCluster` types).
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod children;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod error;
pub mod labels;
pub mod limits;
pub mod metrics;
pub mod rbac;
pub mod reconcile;
pub mod run;
pub mod telemetry;
