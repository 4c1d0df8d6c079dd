//! End-to-end tests in real pods live in `tests/real_pods`: one test binary, so they share one
//! real node (`test_harness::node::Cluster`) and one operator installed by Helm.
