//! The node agent: registers its host with the server, runs the tasks assigned to it through
//! drivers behind one trait, and reports every state change.

pub mod cgroup;
pub mod conditions;
pub mod credentials;
pub mod driver;
pub mod health;
pub mod http;
pub mod logfile;
pub mod node;
pub mod runtime;
pub mod shim;
pub mod stats;
pub mod tls;
