//! Berth's shared vocabulary: the Marathon-compatible app definition, tasks, nodes,
//! deployments and events, plus validation. Nothing in this crate performs I/O, so every
//! other crate (scheduler, store, server, agent, CLI) can depend on it freely.

pub mod app;
pub mod constraint;
pub mod deployment;
pub mod dns;
pub mod error;
pub mod event;
pub mod job;
pub mod namespace;
pub mod node;
pub mod path;
pub mod protocol;
pub mod rbac;
pub mod schedule;
pub mod secret;
pub mod service;
pub mod task;
pub mod time;
pub mod validate;

pub use app::AppDefinition;
pub use constraint::{Constraint, ConstraintOp};
pub use error::{FieldError, ValidationErrors};
pub use node::{Node, NodeResources};
pub use task::{Task, TaskGoal, TaskState};
