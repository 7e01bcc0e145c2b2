//! Command-line client.
