//! chat-operator: the ChatCluster API, its reconciler and the builders of every child object.

pub mod observability;
