//! Durable store with etcd semantics.
